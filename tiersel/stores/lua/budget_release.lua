-- ARGV[3] call id
drop(ARGV[3])
return reply(1)
