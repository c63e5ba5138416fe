return reply(1)
