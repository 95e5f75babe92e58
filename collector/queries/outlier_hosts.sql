-- name: outlier-hosts
-- description: Hosts far from the fleet on a site (latest snapshots): robust z-score
-- description: 0.6745 * (bytes - median) / MAD, exact medians.
-- param: z float 3.5 report |z| at or above this
-- param: min_bytes size 1M ignore sites where both host and median are below this
-- param: min_hosts int 5 ignore sites seen on fewer hosts
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: limit int 50 how many rows
WITH latest AS (
    SELECT hostname, MAX(taken_at) AS taken_at
    FROM {hosts}
    WHERE ${label_key} = '' OR labels[${label_key}] = ${label_value}
    GROUP BY hostname
),
cur AS (
    SELECT a.loose_key AS site, a.hostname, CAST(SUM(a.bytes) AS DOUBLE) AS bytes
    FROM {allocinfo} a JOIN latest l ON a.hostname = l.hostname AND a.taken_at = l.taken_at
    GROUP BY a.loose_key, a.hostname
),
ranked AS (
    SELECT site, bytes,
           ROW_NUMBER() OVER (PARTITION BY site ORDER BY bytes, hostname) AS rn,
           COUNT(*) OVER (PARTITION BY site) AS n
    FROM cur
),
med AS (
    SELECT site, AVG(bytes) AS median, MIN(n) AS n
    FROM ranked WHERE 2 * rn BETWEEN n AND n + 2 GROUP BY site
),
dev AS (
    SELECT c.site, c.hostname, c.bytes, m.median, m.n, ABS(c.bytes - m.median) AS d
    FROM cur c JOIN med m ON c.site = m.site
),
dranked AS (
    SELECT site, d, n, ROW_NUMBER() OVER (PARTITION BY site ORDER BY d, hostname) AS rn
    FROM dev
),
mad AS (
    SELECT site, AVG(d) AS mad FROM dranked WHERE 2 * rn BETWEEN n AND n + 2 GROUP BY site
),
scored AS (
    SELECT v.site, v.hostname, v.bytes, v.median, m.mad, v.n AS hosts,
           CAST(0.6745 AS DOUBLE) * (v.bytes - v.median) / NULLIF(m.mad, 0) AS z
    FROM dev v JOIN mad m ON v.site = m.site
    WHERE v.n >= ${min_hosts} AND (v.bytes >= ${min_bytes} OR v.median >= ${min_bytes})
)
SELECT site, hostname, CAST(bytes AS BIGINT) AS bytes, median, mad, hosts, z
FROM scored
WHERE ABS(z) >= ${z}
ORDER BY ABS(z) DESC, site, hostname
LIMIT ${limit}
