-- core_user_day: one row per (UTC day, user).
-- Distinct counts are computed as DISTINCT sub-queries joined back on (day, user_id): the
-- same result as COUNT(DISTINCT ...) inside the main GROUP BY, which DataFusion evaluates with
-- one hash set per group and which costs ~100x more time and memory at millions of user-days.
-- `day` is the UTC calendar day of `ts`: the same value as CAST(ts AS DATE), written as
-- whole days since 1970 (a floor division of the microsecond count, right before 1970 too)
-- because the cast looks up the time zone for every event (~15% of this query's time).
WITH ev AS (
    SELECT
        CAST(CAST((CAST(ts AS BIGINT) - ((CAST(ts AS BIGINT) % 86400000000) + 86400000000) % 86400000000) / 86400000000 AS INT) AS DATE) AS day,
        user_id, ip, device_id, event_type, tokens_in, tokens_out, latency_ms, blocked, warned,
        is_abuse_gt
    FROM events
),
base AS (
    SELECT
        day,
        user_id,
        COUNT(*)                                             AS n_events,
        SUM(CASE WHEN event_type = 'chat' THEN 1 ELSE 0 END) AS n_chat,
        SUM(tokens_in)                                       AS tokens_in_sum,
        SUM(tokens_out)                                      AS tokens_out_sum,
        AVG(CAST(latency_ms AS DOUBLE))                      AS latency_ms_avg,
        SUM(CAST(blocked AS BIGINT))                         AS n_blocked,
        SUM(CAST(warned AS BIGINT))                          AS n_warned,
        MAX(is_abuse_gt)                                     AS is_abuse_gt
    FROM ev
    GROUP BY day, user_id
),
ips AS (
    SELECT day, user_id, COUNT(*) AS n_ips
    FROM (SELECT DISTINCT day, user_id, ip FROM ev) AS d
    GROUP BY day, user_id
),
devices AS (
    SELECT day, user_id, COUNT(*) AS n_devices
    FROM (SELECT DISTINCT day, user_id, device_id FROM ev) AS d
    GROUP BY day, user_id
)
SELECT
    b.day, b.user_id, b.n_events, b.n_chat, b.tokens_in_sum, b.tokens_out_sum,
    b.latency_ms_avg, b.n_blocked, b.n_warned, i.n_ips, d.n_devices, b.is_abuse_gt
FROM base AS b
JOIN ips AS i ON i.day = b.day AND i.user_id = b.user_id
JOIN devices AS d ON d.day = b.day AND d.user_id = b.user_id
ORDER BY b.day, b.user_id
