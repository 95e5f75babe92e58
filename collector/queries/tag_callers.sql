-- name: tag-callers
-- description: Callers of one allocation tag across the fleet (context dataset, every
-- description: committed interval): calls and bytes combined from the sampler's summed
-- description: weights and variances, with 95% intervals (Garwood on Kish's effective points),
-- description: and each caller's share of the tag's calls and bytes (Kish-Wilson).
-- param: tag str REQUIRED the tag ('file:line func:name') or its function
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: limit int 50 how many callers
--
-- Variances add because hosts and intervals are independent samples; intervals do not, so
-- they are derived here from the sums exactly as collector/byte_sampling.py does for one
-- capture (the chi-square quantile by Wilson-Hilferty, the same approximation).
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
sel AS (
    SELECT * FROM ctx WHERE tag = ${tag} OR function = ${tag}
),
t AS (
    SELECT SUM(hits) AS hits, SUM(calls) AS calls, SUM(calls_var) AS calls_var,
           SUM(bytes) AS bytes, SUM(bytes_var) AS bytes_var
    FROM sel WHERE row_kind = 'tag'
),
c AS (
    SELECT caller, COUNT(DISTINCT hostname) AS hosts, COUNT(*) AS intervals,
           SUM(hits) AS hits, SUM(calls) AS calls, SUM(calls_var) AS calls_var,
           SUM(bytes) AS bytes, SUM(bytes_var) AS bytes_var,
           CAST(MAX(rate) AS DOUBLE) AS rate
    FROM sel WHERE row_kind = 'caller'
    GROUP BY caller
),
est AS (
    SELECT c.caller, c.hosts, c.intervals, c.hits, c.calls, c.calls_var, c.bytes, c.bytes_var,
           c.rate,
           CASE WHEN t.calls <= 0 THEN 0.0 ELSE (c.calls / NULLIF(t.calls, 0)) END AS call_share,
       CASE WHEN t.calls <= 0 OR (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END) <= 0 THEN 0.0
            ELSE LEAST((c.calls / NULLIF(t.calls, 0)), CASE WHEN (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END) <= 0 THEN 0.0
              ELSE GREATEST(0.0, (((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END) + (1.959963984540054 * 1.959963984540054) / (2 * (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END))) / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END))) - (SQRT((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END) * (1 - (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END)) / (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END) + (1.959963984540054 * 1.959963984540054) / (4 * (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END) * (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END))) * 1.959963984540054 / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END)))) END) END AS call_share_low,
       CASE WHEN t.calls <= 0 OR (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END) <= 0 THEN 1.0
            ELSE GREATEST((c.calls / NULLIF(t.calls, 0)), CASE WHEN (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END) >= 1 THEN 1.0
              ELSE LEAST(1.0, (((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END) + (1.959963984540054 * 1.959963984540054) / (2 * (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END))) / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END))) + (SQRT((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END) * (1 - (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.calls / NULLIF(t.calls, 0)) END)) / (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END) + (1.959963984540054 * 1.959963984540054) / (4 * (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END) * (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END))) * 1.959963984540054 / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.calls_var > 0 THEN t.calls * t.calls / t.calls_var ELSE 0.0 END)))) END) END AS call_share_high,
       CASE WHEN t.bytes <= 0 THEN 0.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END AS byte_share,
       CASE WHEN t.bytes <= 0 OR (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END) <= 0 THEN 0.0
            ELSE LEAST((c.bytes / NULLIF(t.bytes, 0)), CASE WHEN (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END) <= 0 THEN 0.0
              ELSE GREATEST(0.0, (((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END) + (1.959963984540054 * 1.959963984540054) / (2 * (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END))) / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END))) - (SQRT((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END) * (1 - (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END)) / (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END) + (1.959963984540054 * 1.959963984540054) / (4 * (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END) * (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END))) * 1.959963984540054 / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END)))) END) END AS byte_share_low,
       CASE WHEN t.bytes <= 0 OR (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END) <= 0 THEN 1.0
            ELSE GREATEST((c.bytes / NULLIF(t.bytes, 0)), CASE WHEN (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END) >= 1 THEN 1.0
              ELSE LEAST(1.0, (((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END) + (1.959963984540054 * 1.959963984540054) / (2 * (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END))) / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END))) + (SQRT((CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END) * (1 - (CASE WHEN c.hits = t.hits THEN 1.0 ELSE (c.bytes / NULLIF(t.bytes, 0)) END)) / (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END) + (1.959963984540054 * 1.959963984540054) / (4 * (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END) * (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END))) * 1.959963984540054 / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN t.bytes_var > 0 THEN t.bytes * t.bytes / t.bytes_var ELSE 0.0 END)))) END) END AS byte_share_high
    FROM c CROSS JOIN t
)
SELECT caller, hosts, intervals, hits AS samples,
       calls,
       CASE WHEN calls <= 0 THEN 0.0 WHEN calls_var <= 0 THEN calls
            ELSE LEAST(calls, calls * POWER(GREATEST(0.0, 1 - 1 / (9 * (calls * calls / calls_var))
              - 1.959963984540054 / (3 * SQRT((calls * calls / calls_var)))), 3)) END AS calls_low,
       CASE WHEN calls <= 0 THEN GREATEST(1.0, rate / 8.0) * POWER(1 - 1.0 / 9 + 1.959963984540054 / 3, 3)
            WHEN calls_var <= 0 THEN calls
            ELSE GREATEST(calls, ((calls * calls / calls_var) + 1) * POWER(GREATEST(0.0, 1 - 1 / (9 * ((calls * calls / calls_var) + 1))
              + 1.959963984540054 / (3 * SQRT((calls * calls / calls_var) + 1))), 3) * calls_var / calls) END AS calls_high,
       bytes,
       CASE WHEN bytes <= 0 THEN 0.0 WHEN bytes_var <= 0 THEN bytes
            ELSE LEAST(bytes, bytes * POWER(GREATEST(0.0, 1 - 1 / (9 * (bytes * bytes / bytes_var))
              - 1.959963984540054 / (3 * SQRT((bytes * bytes / bytes_var)))), 3)) END AS bytes_low,
       CASE WHEN bytes <= 0 THEN rate * POWER(1 - 1.0 / 9 + 1.959963984540054 / 3, 3)
            WHEN bytes_var <= 0 THEN bytes
            ELSE GREATEST(bytes, ((bytes * bytes / bytes_var) + 1) * POWER(GREATEST(0.0, 1 - 1 / (9 * ((bytes * bytes / bytes_var) + 1))
              + 1.959963984540054 / (3 * SQRT((bytes * bytes / bytes_var) + 1))), 3) * bytes_var / bytes) END AS bytes_high,
       call_share, call_share_low, call_share_high,
       byte_share, byte_share_low, byte_share_high
FROM est
ORDER BY calls DESC, caller
LIMIT ${limit}
