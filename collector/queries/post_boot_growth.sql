-- name: post-boot-growth
-- description: Sites that grew by at least MIN_BYTES since the host's first snapshot of its
-- description: current boot (the talk's "> 10 MB post-boot"), per host, latest snapshot.
-- param: min_bytes size 10M growth threshold
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: limit int 50 how many rows
WITH snaps AS (
    SELECT hostname, boot_id, taken_at, uptime_s
    FROM {hosts}
    WHERE ${label_key} = '' OR labels[${label_key}] = ${label_value}
),
latest AS (
    SELECT hostname, MAX(taken_at) AS taken_at FROM snaps GROUP BY hostname
),
cur AS (
    SELECT s.hostname, s.boot_id, s.taken_at, s.uptime_s
    FROM snaps s JOIN latest l ON s.hostname = l.hostname AND s.taken_at = l.taken_at
),
boot_first AS (
    SELECT s.hostname, MIN(s.taken_at) AS taken_at
    FROM snaps s JOIN cur c ON s.hostname = c.hostname AND s.boot_id = c.boot_id
    GROUP BY s.hostname
),
pairs AS (
    SELECT c.hostname, f.taken_at AS at0, c.taken_at AS at1, c.uptime_s
    FROM cur c JOIN boot_first f ON c.hostname = f.hostname
    WHERE f.taken_at < c.taken_at
),
b0 AS (
    SELECT a.hostname, a.site_key, a.bytes
    FROM {allocinfo} a JOIN pairs p ON a.hostname = p.hostname AND a.taken_at = p.at0
),
b1 AS (
    SELECT a.hostname, a.site_key, a.loose_key, a.subsystem, a.bytes
    FROM {allocinfo} a JOIN pairs p ON a.hostname = p.hostname AND a.taken_at = p.at1
)
SELECT b1.hostname, b1.loose_key AS site, b1.site_key, b1.subsystem,
       COALESCE(b0.bytes, 0) AS bytes_at_first, b1.bytes AS bytes_now,
       b1.bytes - COALESCE(b0.bytes, 0) AS growth, p.uptime_s
FROM b1
LEFT JOIN b0 ON b1.hostname = b0.hostname AND b1.site_key = b0.site_key
JOIN pairs p ON b1.hostname = p.hostname
WHERE b1.bytes - COALESCE(b0.bytes, 0) >= ${min_bytes}
ORDER BY growth DESC, b1.hostname, b1.site_key
LIMIT ${limit}
