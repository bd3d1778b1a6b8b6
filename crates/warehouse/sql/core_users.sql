-- core_users: one row per user over all stored events.
-- A missing payment token counts as the value 'none' (so a user with no payment has 1).
-- Built after core_user_day and user_keys, and from them where it can be: the event, chat,
-- blocked and warned counts are sums of the user's days, and the distinct IPs, devices and
-- payment tokens are distinct values of user_keys (the distinct identifier combinations of
-- the events), so only first/last seen need another pass over the events.
WITH seen AS (
    SELECT user_id, MIN(ts) AS first_seen_ts, MAX(ts) AS last_seen_ts
    FROM events
    GROUP BY user_id
),
counts AS (
    SELECT
        user_id,
        SUM(n_events)  AS n_events,
        SUM(n_chat)    AS n_chat,
        SUM(n_blocked) AS n_blocked,
        SUM(n_warned)  AS n_warned
    FROM core_user_day
    GROUP BY user_id
),
ips AS (
    SELECT user_id, COUNT(*) AS n_ips
    FROM (SELECT DISTINCT user_id, ip FROM user_keys) AS d GROUP BY user_id
),
devices AS (
    SELECT user_id, COUNT(*) AS n_devices
    FROM (SELECT DISTINCT user_id, device_id FROM user_keys) AS d GROUP BY user_id
),
payments AS (
    SELECT user_id, COUNT(*) AS n_payments
    FROM (SELECT DISTINCT user_id, COALESCE(payment_id, 'none') AS p FROM user_keys) AS d
    GROUP BY user_id
)
SELECT
    s.user_id, s.first_seen_ts, s.last_seen_ts, c.n_events, c.n_chat, c.n_blocked, c.n_warned,
    i.n_ips, d.n_devices, p.n_payments
FROM seen AS s
JOIN counts AS c ON c.user_id = s.user_id
JOIN ips AS i ON i.user_id = s.user_id
JOIN devices AS d ON d.user_id = s.user_id
JOIN payments AS p ON p.user_id = s.user_id
ORDER BY s.user_id
