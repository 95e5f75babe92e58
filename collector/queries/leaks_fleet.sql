-- name: leaks-fleet
-- description: Outstanding old allocations per tag (or site) and caller across the fleet
-- description: (lifespan dataset): bytes still live and older than the capture's threshold at
-- description: the end of each host's latest interval, summed over hosts, with 95% intervals.
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: limit int 20 how many rows (most old bytes first)
WITH committed AS (
    SELECT DISTINCT hostname, taken_at FROM {hosts}
),
life AS (
    SELECT l.*, COALESCE(l.tag, l.site) AS key
    FROM {lifespan} l
    LEFT JOIN committed k ON l.hostname = k.hostname AND l.taken_at = k.taken_at
    WHERE (l.source <> 'agent' OR k.hostname IS NOT NULL)
      AND (${label_key} = '' OR l.labels[${label_key}] = ${label_value})
),
latest AS (
    SELECT hostname, MAX(taken_at) AS taken_at FROM life GROUP BY hostname
),
cur AS (
    SELECT l.* FROM life l JOIN latest x ON l.hostname = x.hostname AND l.taken_at = x.taken_at
    WHERE l.row_kind = 'row'
),
s AS (
    SELECT key, caller, COUNT(DISTINCT hostname) AS hosts,
           SUM(old_bytes) AS old_bytes, SUM(old_bytes_var) AS old_bytes_var,
           SUM(old_calls) AS old_calls, SUM(live_bytes) AS live_bytes,
           CAST(MAX(sample_rate * POWER(2, addr_shift)) AS DOUBLE) AS point
    FROM cur GROUP BY key, caller
)
SELECT key AS tag, caller, hosts,
       old_bytes,
       CASE WHEN old_bytes <= 0 THEN 0.0 WHEN old_bytes_var <= 0 THEN old_bytes
            ELSE LEAST(old_bytes, old_bytes * POWER(GREATEST(0.0, 1 - 1 / (9 * (old_bytes * old_bytes / old_bytes_var))
              - 1.959963984540054 / (3 * SQRT((old_bytes * old_bytes / old_bytes_var)))), 3)) END AS old_bytes_low,
       CASE WHEN old_bytes <= 0 THEN point * POWER(1 - 1.0 / 9 + 1.959963984540054 / 3, 3)
            WHEN old_bytes_var <= 0 THEN old_bytes
            ELSE GREATEST(old_bytes, ((old_bytes * old_bytes / old_bytes_var) + 1) * POWER(GREATEST(0.0, 1 - 1 / (9 * ((old_bytes * old_bytes / old_bytes_var) + 1))
              + 1.959963984540054 / (3 * SQRT((old_bytes * old_bytes / old_bytes_var) + 1))), 3) * old_bytes_var / old_bytes) END AS old_bytes_high,
       old_calls, live_bytes
FROM s
WHERE old_bytes > 0
ORDER BY old_bytes DESC, tag, caller
LIMIT ${limit}
