-- user_context: per-user history and identifier fanout. The stronger model joins these to
-- each user-day (abuse is a property of an account and its infrastructure, not of one day);
-- the spec's logistic regression keeps to the twelve user-day features.
-- Fanout = how many users share the user's busiest IP, device or payment token, counted from
-- user_keys (built first; its distinct pairs are the events' distinct pairs).
WITH hist AS (
    SELECT user_id,
           SUM(n_events) AS events, SUM(n_chat) AS chats, SUM(n_blocked) AS blocked,
           SUM(n_warned) AS warned, COUNT(*) AS days_active
    FROM core_user_day
    GROUP BY user_id
),
ip_pairs AS (SELECT DISTINCT ip, user_id FROM user_keys),
dev_pairs AS (SELECT DISTINCT device_id, user_id FROM user_keys),
pay_pairs AS (
    SELECT DISTINCT payment_id, user_id FROM user_keys
    WHERE payment_id IS NOT NULL AND payment_id <> ''
),
ip_fan AS (SELECT ip, COUNT(*) AS fanout FROM ip_pairs GROUP BY ip),
dev_fan AS (SELECT device_id, COUNT(*) AS fanout FROM dev_pairs GROUP BY device_id),
pay_fan AS (SELECT payment_id, COUNT(*) AS fanout FROM pay_pairs GROUP BY payment_id),
ip_max AS (
    SELECT p.user_id, MAX(f.fanout) AS ip_fanout
    FROM ip_pairs p JOIN ip_fan f ON p.ip = f.ip GROUP BY p.user_id
),
dev_max AS (
    SELECT p.user_id, MAX(f.fanout) AS device_fanout
    FROM dev_pairs p JOIN dev_fan f ON p.device_id = f.device_id GROUP BY p.user_id
),
pay_max AS (
    SELECT p.user_id, MAX(f.fanout) AS payment_fanout
    FROM pay_pairs p JOIN pay_fan f ON p.payment_id = f.payment_id GROUP BY p.user_id
)
SELECT
    h.user_id,
    CASE WHEN h.chats > 0 THEN CAST(h.blocked AS DOUBLE) / h.chats ELSE 0.0 END AS user_block_rate,
    CASE WHEN h.chats > 0 THEN CAST(h.warned AS DOUBLE) / h.chats ELSE 0.0 END  AS user_warn_rate,
    CAST(h.days_active AS DOUBLE)                                              AS user_days_active,
    CAST(h.events AS DOUBLE) / h.days_active                                   AS user_events_per_day,
    CAST(COALESCE(i.ip_fanout, 0) AS DOUBLE)                                   AS ip_fanout,
    CAST(COALESCE(d.device_fanout, 0) AS DOUBLE)                               AS device_fanout,
    CAST(COALESCE(p.payment_fanout, 0) AS DOUBLE)                              AS payment_fanout
FROM hist h
LEFT JOIN ip_max i ON h.user_id = i.user_id
LEFT JOIN dev_max d ON h.user_id = d.user_id
LEFT JOIN pay_max p ON h.user_id = p.user_id
ORDER BY h.user_id
