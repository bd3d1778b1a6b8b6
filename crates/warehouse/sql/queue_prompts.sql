-- queue_prompts: the non-empty chat prompts of each queued user-day, in time order (the
-- review queue's enrichment). `queue_keys` (day, user_id) is registered by the review-queue
-- stage. `day` is derived from `ts` exactly as in core_user_day (the UTC calendar day).
SELECT k.day, e.user_id, e.prompt
FROM events e
JOIN queue_keys k
  ON e.user_id = k.user_id
 AND CAST(CAST(CAST((CAST(e.ts AS BIGINT) - ((CAST(e.ts AS BIGINT) % 86400000000) + 86400000000) % 86400000000) / 86400000000 AS INT) AS DATE) AS VARCHAR) = k.day
WHERE e.event_type = 'chat' AND e.prompt IS NOT NULL AND e.prompt <> ''
ORDER BY e.ts, e.event_id
