-- user_day_features: the core user-day counts plus the three ratios of the spec, each 0 when
-- its denominator is 0.
SELECT
    day, user_id, n_events, n_chat, tokens_in_sum, tokens_out_sum, latency_ms_avg,
    n_blocked, n_warned, n_ips, n_devices, is_abuse_gt,
    CASE WHEN n_chat > 0 THEN CAST(n_blocked AS DOUBLE) / n_chat ELSE 0.0 END   AS block_rate,
    CASE WHEN n_chat > 0 THEN CAST(n_warned AS DOUBLE) / n_chat ELSE 0.0 END    AS warn_rate,
    CASE WHEN n_events > 0 THEN CAST(n_chat AS DOUBLE) / n_events ELSE 0.0 END  AS chat_fraction
FROM core_user_day
ORDER BY day, user_id
