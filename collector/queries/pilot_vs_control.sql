-- name: pilot-vs-control
-- description: Per site, hosts labelled KEY=A against KEY=B (latest snapshots): mean, exact
-- description: median, ratio of means, Welch's t and its degrees of freedom.
-- param: key str group the label that splits the fleet
-- param: a str pilot the first group (profiling on)
-- param: b str control the second group
-- param: min_bytes size 0 ignore sites whose means are both below this
-- param: limit int 20 how many sites (largest |t| first)
WITH latest AS (
    SELECT hostname, MAX(taken_at) AS taken_at FROM {hosts} GROUP BY hostname
),
grp AS (
    SELECT h.hostname, h.taken_at, h.labels[${key}] AS grp
    FROM {hosts} h JOIN latest l ON h.hostname = l.hostname AND h.taken_at = l.taken_at
    WHERE h.labels[${key}] IN (${a}, ${b})
),
cur AS (
    SELECT a.loose_key AS site, a.hostname, g.grp, CAST(SUM(a.bytes) AS DOUBLE) AS bytes
    FROM {allocinfo} a JOIN grp g ON a.hostname = g.hostname AND a.taken_at = g.taken_at
    GROUP BY a.loose_key, a.hostname, g.grp
),
ranked AS (
    SELECT site, grp, bytes,
           ROW_NUMBER() OVER (PARTITION BY site, grp ORDER BY bytes, hostname) AS rn,
           COUNT(*) OVER (PARTITION BY site, grp) AS n
    FROM cur
),
stats AS (
    SELECT site, grp, MIN(n) AS n, AVG(bytes) AS mean, VAR_SAMP(bytes) AS var
    FROM ranked GROUP BY site, grp
),
med AS (
    SELECT site, grp, AVG(bytes) AS median
    FROM ranked WHERE 2 * rn BETWEEN n AND n + 2 GROUP BY site, grp
),
joined AS (
    SELECT sa.site, sa.n AS n_a, sb.n AS n_b, sa.mean AS mean_a, sb.mean AS mean_b,
           ma.median AS median_a, mb.median AS median_b,
           sa.mean / NULLIF(sb.mean, 0) AS ratio,
           sa.var / sa.n AS va, sb.var / sb.n AS vb
    FROM stats sa
    JOIN stats sb ON sa.site = sb.site AND sa.grp = ${a} AND sb.grp = ${b}
    JOIN med ma ON ma.site = sa.site AND ma.grp = sa.grp
    JOIN med mb ON mb.site = sb.site AND mb.grp = sb.grp
    WHERE sa.mean >= ${min_bytes} OR sb.mean >= ${min_bytes}
),
tested AS (
    SELECT site, n_a, n_b, mean_a, mean_b, median_a, median_b, ratio,
           (mean_a - mean_b) / SQRT(NULLIF(va + vb, 0)) AS welch_t,
           (va + vb) * (va + vb)
             / NULLIF(va * va / NULLIF(n_a - 1, 0) + vb * vb / NULLIF(n_b - 1, 0), 0) AS df
    FROM joined
)
SELECT site, n_a, n_b, mean_a, mean_b, median_a, median_b, ratio, welch_t, df
FROM tested
ORDER BY ABS(welch_t) DESC NULLS LAST, site
LIMIT ${limit}
