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
    SELECT CAST(ts AS DATE) AS day, AVG(CAST(latency_ms AS DOUBLE)) AS latency_ms_avg
    FROM events
    GROUP BY CAST(ts AS DATE)
)
SELECT d.day, d.n_events, d.n_chat, d.n_active_users, d.n_blocked, d.n_warned, l.latency_ms_avg
FROM days AS d
JOIN latency AS l ON l.day = d.day
ORDER BY d.day
