-- user_keys: each distinct (user, IP, device, payment token) combination in the events. One
-- scan of the events; user_context counts identifier fanout from this much smaller table
-- (300,000 rows for 10M generated events) instead of scanning the events once per identifier.
SELECT DISTINCT user_id, ip, device_id, payment_id FROM events
