-- core_users: one row per user over all stored events.
-- A missing payment token counts as the value 'none' (so a user with no payment has 1).
-- Distinct counts come from DISTINCT sub-queries (see core_user_day.sql for why).
WITH base AS (
    SELECT
        user_id,
        MIN(ts)                                              AS first_seen_ts,
        MAX(ts)                                              AS last_seen_ts,
        COUNT(*)                                             AS n_events,
        SUM(CASE WHEN event_type = 'chat' THEN 1 ELSE 0 END) AS n_chat,
        SUM(CAST(blocked AS BIGINT))                         AS n_blocked,
        SUM(CAST(warned AS BIGINT))                          AS n_warned
    FROM events
    GROUP BY user_id
),
ips AS (
    SELECT user_id, COUNT(*) AS n_ips
    FROM (SELECT DISTINCT user_id, ip FROM events) AS d GROUP BY user_id
),
devices AS (
    SELECT user_id, COUNT(*) AS n_devices
    FROM (SELECT DISTINCT user_id, device_id FROM events) AS d GROUP BY user_id
),
payments AS (
    SELECT user_id, COUNT(*) AS n_payments
    FROM (SELECT DISTINCT user_id, COALESCE(payment_id, 'none') AS p FROM events) AS d
    GROUP BY user_id
)
SELECT
    b.user_id, b.first_seen_ts, b.last_seen_ts, b.n_events, b.n_chat, b.n_blocked, b.n_warned,
    i.n_ips, d.n_devices, p.n_payments
FROM base AS b
JOIN ips AS i ON i.user_id = b.user_id
JOIN devices AS d ON d.user_id = b.user_id
JOIN payments AS p ON p.user_id = b.user_id
ORDER BY b.user_id
