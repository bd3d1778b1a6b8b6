-- monitoring_metrics: the daily metrics plus block and warn rates (0 on a day without chats).
SELECT
    *,
    CASE WHEN n_chat > 0 THEN CAST(n_blocked AS DOUBLE) / n_chat ELSE 0.0 END AS block_rate,
    CASE WHEN n_chat > 0 THEN CAST(n_warned AS DOUBLE) / n_chat ELSE 0.0 END  AS warn_rate
FROM core_day_metrics
ORDER BY day
