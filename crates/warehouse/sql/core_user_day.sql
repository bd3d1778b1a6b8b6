-- core_user_day: one row per (UTC day, user).
SELECT
    CAST(ts AS DATE)                                     AS day,
    user_id,
    COUNT(*)                                             AS n_events,
    SUM(CASE WHEN event_type = 'chat' THEN 1 ELSE 0 END) AS n_chat,
    SUM(tokens_in)                                       AS tokens_in_sum,
    SUM(tokens_out)                                      AS tokens_out_sum,
    AVG(CAST(latency_ms AS DOUBLE))                      AS latency_ms_avg,
    SUM(CAST(blocked AS BIGINT))                         AS n_blocked,
    SUM(CAST(warned AS BIGINT))                          AS n_warned,
    COUNT(DISTINCT ip)                                   AS n_ips,
    COUNT(DISTINCT device_id)                            AS n_devices,
    MAX(is_abuse_gt)                                     AS is_abuse_gt
FROM events
GROUP BY CAST(ts AS DATE), user_id
ORDER BY day, user_id
