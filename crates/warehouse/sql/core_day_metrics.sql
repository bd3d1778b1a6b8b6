-- core_day_metrics: one row per UTC day.
-- Built after core_user_day: the counts are sums over the day's user-days (a user active on
-- a day has exactly one row there), so only the mean latency needs the events, and it
-- reads just their timestamp and latency columns.
WITH days AS (
    SELECT
        day,
        SUM(n_events)  AS n_events,
        SUM(n_chat)    AS n_chat,
        COUNT(*)       AS n_active_users,
        SUM(n_blocked) AS n_blocked,
        SUM(n_warned)  AS n_warned
    FROM core_user_day
    GROUP BY day
),
latency AS (
    SELECT day, AVG(CAST(latency_ms AS DOUBLE)) AS latency_ms_avg
    FROM (
        -- The UTC day of `ts` as in core_user_day.sql (CAST(ts AS DATE) without a time-zone
        -- lookup per event).
        SELECT
            CAST(CAST((CAST(ts AS BIGINT) - ((CAST(ts AS BIGINT) % 86400000000) + 86400000000) % 86400000000) / 86400000000 AS INT) AS DATE) AS day,
            latency_ms
        FROM events
    ) AS e
    GROUP BY day
)
SELECT d.day, d.n_events, d.n_chat, d.n_active_users, d.n_blocked, d.n_warned, l.latency_ms_avg
FROM days AS d
JOIN latency AS l ON l.day = d.day
ORDER BY d.day
