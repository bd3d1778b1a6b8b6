-- chat_messages: every non-empty chat prompt with its user and UTC day, in time order: the
-- rare-harm stage's input. `day` is derived from `ts` exactly as in core_user_day.
SELECT e.user_id,
       CAST(CAST(CAST((CAST(e.ts AS BIGINT) - ((CAST(e.ts AS BIGINT) % 86400000000) + 86400000000) % 86400000000) / 86400000000 AS INT) AS DATE) AS VARCHAR) AS day,
       e.prompt
FROM events e
WHERE e.event_type = 'chat' AND e.prompt IS NOT NULL AND e.prompt <> ''
ORDER BY e.ts, e.event_id
