-- core_users: one row per user over all stored events.
-- A missing payment token counts as the value 'none' (so a user with no payment has 1).
SELECT
    user_id,
    MIN(ts)                                              AS first_seen_ts,
    MAX(ts)                                              AS last_seen_ts,
    COUNT(*)                                             AS n_events,
    SUM(CASE WHEN event_type = 'chat' THEN 1 ELSE 0 END) AS n_chat,
    SUM(CAST(blocked AS BIGINT))                         AS n_blocked,
    SUM(CAST(warned AS BIGINT))                          AS n_warned,
    COUNT(DISTINCT ip)                                   AS n_ips,
    COUNT(DISTINCT device_id)                            AS n_devices,
    COUNT(DISTINCT COALESCE(payment_id, 'none'))         AS n_payments
FROM events
GROUP BY user_id
ORDER BY user_id
