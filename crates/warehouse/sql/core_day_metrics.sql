-- core_day_metrics: one row per UTC day.
SELECT
    CAST(ts AS DATE)                                     AS day,
    COUNT(*)                                             AS n_events,
    SUM(CASE WHEN event_type = 'chat' THEN 1 ELSE 0 END) AS n_chat,
    COUNT(DISTINCT user_id)                              AS n_active_users,
    SUM(CAST(blocked AS BIGINT))                         AS n_blocked,
    SUM(CAST(warned AS BIGINT))                          AS n_warned,
    AVG(CAST(latency_ms AS DOUBLE))                      AS latency_ms_avg
FROM events
GROUP BY CAST(ts AS DATE)
ORDER BY day
