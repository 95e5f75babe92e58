-- name: charged-by-subsystem
-- description: Bytes allocated per subsystem charged to a memory cgroup vs not (context
-- description: dataset, every committed interval): charged bytes with a 95% interval, the
-- description: charged share (Kish-Wilson) of the bytes whose charge is known, and the bytes
-- description: of tags whose charge is unknown (no memcg charge bit on that kernel).
-- param: label str '' only hosts with this label (KEY=VALUE)
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
s AS (
    SELECT subsystem, COUNT(DISTINCT hostname) AS hosts,
           SUM(bytes) AS bytes,
           SUM(CASE WHEN charged_hits IS NOT NULL THEN hits ELSE 0 END) AS known_hits,
           SUM(CASE WHEN charged_hits IS NOT NULL THEN bytes ELSE 0.0 END) AS known_bytes,
           SUM(CASE WHEN charged_hits IS NOT NULL THEN bytes_var ELSE 0.0 END) AS known_bytes_var,
           SUM(CASE WHEN charged_hits IS NULL THEN bytes ELSE 0.0 END) AS unknown_bytes,
           COALESCE(SUM(charged_hits), 0) AS charged_hits,
           COALESCE(SUM(charged_bytes), 0.0) AS charged_bytes,
           COALESCE(SUM(charged_bytes_var), 0.0) AS charged_bytes_var,
           CAST(MAX(rate) AS DOUBLE) AS rate
    FROM ctx WHERE row_kind = 'tag'
    GROUP BY subsystem
)
SELECT subsystem, hosts, bytes,
       charged_bytes,
       CASE WHEN charged_bytes <= 0 THEN 0.0 WHEN charged_bytes_var <= 0 THEN charged_bytes
            ELSE LEAST(charged_bytes, charged_bytes * POWER(GREATEST(0.0, 1 - 1 / (9 * (charged_bytes * charged_bytes / charged_bytes_var))
              - 1.959963984540054 / (3 * SQRT((charged_bytes * charged_bytes / charged_bytes_var)))), 3)) END AS charged_bytes_low,
       CASE WHEN charged_bytes <= 0 THEN rate * POWER(1 - 1.0 / 9 + 1.959963984540054 / 3, 3)
            WHEN charged_bytes_var <= 0 THEN charged_bytes
            ELSE GREATEST(charged_bytes, ((charged_bytes * charged_bytes / charged_bytes_var) + 1) * POWER(GREATEST(0.0, 1 - 1 / (9 * ((charged_bytes * charged_bytes / charged_bytes_var) + 1))
              + 1.959963984540054 / (3 * SQRT((charged_bytes * charged_bytes / charged_bytes_var) + 1))), 3) * charged_bytes_var / charged_bytes) END AS charged_bytes_high,
       known_bytes - charged_bytes AS uncharged_bytes,
       CASE WHEN known_bytes <= 0 THEN 0.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END AS charged_share,
       CASE WHEN known_bytes <= 0 OR (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END) <= 0 THEN 0.0
            ELSE LEAST((charged_bytes / NULLIF(known_bytes, 0)), CASE WHEN (CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END) <= 0 THEN 0.0
              ELSE GREATEST(0.0, (((CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END) + (1.959963984540054 * 1.959963984540054) / (2 * (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END))) / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END))) - (SQRT((CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END) * (1 - (CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END)) / (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END) + (1.959963984540054 * 1.959963984540054) / (4 * (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END) * (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END))) * 1.959963984540054 / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END)))) END) END AS charged_share_low,
       CASE WHEN known_bytes <= 0 OR (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END) <= 0 THEN 1.0
            ELSE GREATEST((charged_bytes / NULLIF(known_bytes, 0)), CASE WHEN (CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END) >= 1 THEN 1.0
              ELSE LEAST(1.0, (((CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END) + (1.959963984540054 * 1.959963984540054) / (2 * (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END))) / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END))) + (SQRT((CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END) * (1 - (CASE WHEN charged_hits = known_hits THEN 1.0 ELSE (charged_bytes / NULLIF(known_bytes, 0)) END)) / (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END) + (1.959963984540054 * 1.959963984540054) / (4 * (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END) * (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END))) * 1.959963984540054 / (1 + (1.959963984540054 * 1.959963984540054) / (CASE WHEN known_bytes_var > 0 THEN known_bytes * known_bytes / known_bytes_var ELSE 0.0 END)))) END) END AS charged_share_high,
       unknown_bytes
FROM s
ORDER BY bytes DESC, subsystem
