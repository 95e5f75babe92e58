-- name: tag-rates
-- description: Fleet-wide allocation rate per tag (context dataset): each host's calls/s and
-- description: bytes/s over the seconds it was sampled, summed over hosts, with 95% intervals
-- description: from the summed variances; hosts = how many hosts allocated through it.
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: limit int 20 how many tags (highest bytes/s first)
WITH committed AS (
    SELECT DISTINCT hostname, taken_at FROM {hosts}
),
ctx AS (
    -- agent rows count once their interval's hosts record (the commit) exists
    SELECT c.*
    FROM {context} c
    LEFT JOIN committed k ON c.hostname = k.hostname AND c.taken_at = k.taken_at
    WHERE (c.source <> 'agent' OR k.hostname IS NOT NULL)
      AND (${label_key} = '' OR c.labels[${label_key}] = ${label_value})
),
host_time AS (
    -- seconds each host was sampled: its distinct committed intervals
    SELECT hostname, SUM(interval_s) AS seconds
    FROM (SELECT DISTINCT hostname, taken_at, interval_s FROM ctx) i
    GROUP BY hostname
),
per_host AS (
    SELECT x.tag, MIN(x.subsystem) AS subsystem, x.hostname,
           SUM(x.calls) / h.seconds AS calls_per_s,
           SUM(x.calls_var) / (h.seconds * h.seconds) AS calls_per_s_var,
           SUM(x.bytes) / h.seconds AS bytes_per_s,
           SUM(x.bytes_var) / (h.seconds * h.seconds) AS bytes_per_s_var,
           CAST(MAX(x.rate) AS DOUBLE) / h.seconds AS rate
    FROM ctx x JOIN host_time h ON x.hostname = h.hostname
    WHERE x.row_kind = 'tag' AND h.seconds > 0
    GROUP BY x.tag, x.hostname, h.seconds
),
fleet AS (
    SELECT tag, MIN(subsystem) AS subsystem, COUNT(*) AS hosts,
           SUM(calls_per_s) AS calls_per_s, SUM(calls_per_s_var) AS calls_per_s_var,
           SUM(bytes_per_s) AS bytes_per_s, SUM(bytes_per_s_var) AS bytes_per_s_var,
           MAX(rate) AS rate
    FROM per_host GROUP BY tag
)
SELECT tag, subsystem, hosts,
       calls_per_s,
       CASE WHEN calls_per_s <= 0 THEN 0.0 WHEN calls_per_s_var <= 0 THEN calls_per_s
            ELSE LEAST(calls_per_s, calls_per_s * POWER(GREATEST(0.0, 1 - 1 / (9 * (calls_per_s * calls_per_s / calls_per_s_var))
              - 1.959963984540054 / (3 * SQRT((calls_per_s * calls_per_s / calls_per_s_var)))), 3)) END AS calls_per_s_low,
       CASE WHEN calls_per_s <= 0 THEN GREATEST(1.0, rate / 8.0) * POWER(1 - 1.0 / 9 + 1.959963984540054 / 3, 3)
            WHEN calls_per_s_var <= 0 THEN calls_per_s
            ELSE GREATEST(calls_per_s, ((calls_per_s * calls_per_s / calls_per_s_var) + 1) * POWER(GREATEST(0.0, 1 - 1 / (9 * ((calls_per_s * calls_per_s / calls_per_s_var) + 1))
              + 1.959963984540054 / (3 * SQRT((calls_per_s * calls_per_s / calls_per_s_var) + 1))), 3) * calls_per_s_var / calls_per_s) END AS calls_per_s_high,
       bytes_per_s,
       CASE WHEN bytes_per_s <= 0 THEN 0.0 WHEN bytes_per_s_var <= 0 THEN bytes_per_s
            ELSE LEAST(bytes_per_s, bytes_per_s * POWER(GREATEST(0.0, 1 - 1 / (9 * (bytes_per_s * bytes_per_s / bytes_per_s_var))
              - 1.959963984540054 / (3 * SQRT((bytes_per_s * bytes_per_s / bytes_per_s_var)))), 3)) END AS bytes_per_s_low,
       CASE WHEN bytes_per_s <= 0 THEN rate * POWER(1 - 1.0 / 9 + 1.959963984540054 / 3, 3)
            WHEN bytes_per_s_var <= 0 THEN bytes_per_s
            ELSE GREATEST(bytes_per_s, ((bytes_per_s * bytes_per_s / bytes_per_s_var) + 1) * POWER(GREATEST(0.0, 1 - 1 / (9 * ((bytes_per_s * bytes_per_s / bytes_per_s_var) + 1))
              + 1.959963984540054 / (3 * SQRT((bytes_per_s * bytes_per_s / bytes_per_s_var) + 1))), 3) * bytes_per_s_var / bytes_per_s) END AS bytes_per_s_high
FROM fleet
ORDER BY bytes_per_s DESC, tag
LIMIT ${limit}
