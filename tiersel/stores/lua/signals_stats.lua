return reply(totals())
