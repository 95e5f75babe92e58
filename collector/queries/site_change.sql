-- name: site-change
-- description: Per-site change between two times: for each host its last snapshot at or
-- description: before FROM and at or before TO, summed per site over hosts that have both.
-- param: from timestamp REQUIRED start time (ISO, UTC) or unix seconds
-- param: to timestamp REQUIRED end time
-- param: host str '' one host (default: every host)
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: limit int 20 how many sites
WITH snaps AS (
    SELECT hostname, taken_at
    FROM {hosts}
    WHERE (${host} = '' OR hostname = ${host})
      AND (${label_key} = '' OR labels[${label_key}] = ${label_value})
),
t0 AS (
    SELECT hostname, MAX(taken_at) AS taken_at FROM snaps
    WHERE taken_at <= ${from} GROUP BY hostname
),
t1 AS (
    SELECT hostname, MAX(taken_at) AS taken_at FROM snaps
    WHERE taken_at <= ${to} GROUP BY hostname
),
pairs AS (
    SELECT t0.hostname, t0.taken_at AS at0, t1.taken_at AS at1
    FROM t0 JOIN t1 ON t0.hostname = t1.hostname
    WHERE t1.taken_at > t0.taken_at
),
b0 AS (
    SELECT a.loose_key, MIN(a.subsystem) AS subsystem, SUM(a.bytes) AS bytes
    FROM {allocinfo} a JOIN pairs p ON a.hostname = p.hostname AND a.taken_at = p.at0
    GROUP BY a.loose_key
),
b1 AS (
    SELECT a.loose_key, MIN(a.subsystem) AS subsystem, SUM(a.bytes) AS bytes
    FROM {allocinfo} a JOIN pairs p ON a.hostname = p.hostname AND a.taken_at = p.at1
    GROUP BY a.loose_key
),
changes AS (
    SELECT COALESCE(b1.loose_key, b0.loose_key) AS site,
           COALESCE(b1.subsystem, b0.subsystem) AS subsystem,
           COALESCE(b0.bytes, 0) AS bytes_from,
           COALESCE(b1.bytes, 0) AS bytes_to,
           COALESCE(b1.bytes, 0) - COALESCE(b0.bytes, 0) AS delta
    FROM b0 FULL OUTER JOIN b1 ON b0.loose_key = b1.loose_key
)
SELECT site, subsystem, bytes_from, bytes_to, delta,
       (SELECT COUNT(*) FROM pairs) AS hosts
FROM changes
ORDER BY ABS(delta) DESC, site
LIMIT ${limit}
