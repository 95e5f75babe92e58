-- name: pilot-vs-control-rates
-- description: Per tag, allocation rate (bytes/s per host, context dataset) of hosts labelled
-- description: KEY=A against KEY=B: hosts, mean and sampling standard error per group, ratio
-- description: of means, and Welch's t over hosts with its degrees of freedom.
-- param: key str group the label that splits the fleet
-- param: a str pilot the first group (profiling on)
-- param: b str control the second group
-- param: limit int 20 how many tags (largest |t| first)
--
-- A host's rate is over all the seconds it was sampled; a tag a host never hit counts as 0 on
-- that host. The between-host spread (Welch) is what a pilot/control decision needs; the
-- sampling error of the group mean is given beside it (se_a, se_b).
WITH committed AS (
    SELECT DISTINCT hostname, taken_at FROM {hosts}
),
ctx AS (
    SELECT c.*, c.labels[${key}] AS grp
    FROM {context} c
    LEFT JOIN committed k ON c.hostname = k.hostname AND c.taken_at = k.taken_at
    WHERE (c.source <> 'agent' OR k.hostname IS NOT NULL)
      AND c.labels[${key}] IN (${a}, ${b})
),
host_time AS (
    SELECT hostname, MIN(grp) AS grp, SUM(interval_s) AS seconds
    FROM (SELECT DISTINCT hostname, grp, taken_at, interval_s FROM ctx) i
    GROUP BY hostname
),
tags AS (
    SELECT DISTINCT tag FROM ctx WHERE row_kind = 'tag'
),
sums AS (
    SELECT tag, hostname, SUM(bytes) AS bytes, SUM(bytes_var) AS bytes_var
    FROM ctx WHERE row_kind = 'tag' GROUP BY tag, hostname
),
per_host AS (
    SELECT t.tag, h.hostname, h.grp,
           COALESCE(s.bytes, 0.0) / h.seconds AS rate,
           COALESCE(s.bytes_var, 0.0) / (h.seconds * h.seconds) AS rate_var
    FROM tags t CROSS JOIN host_time h
    LEFT JOIN sums s ON s.tag = t.tag AND s.hostname = h.hostname
    WHERE h.seconds > 0
),
stats AS (
    SELECT tag, grp, COUNT(*) AS n, AVG(rate) AS mean, VAR_SAMP(rate) AS var,
           SQRT(SUM(rate_var)) / COUNT(*) AS se
    FROM per_host GROUP BY tag, grp
),
joined AS (
    SELECT sa.tag, sa.n AS n_a, sb.n AS n_b, sa.mean AS rate_a, sb.mean AS rate_b,
           sa.se AS se_a, sb.se AS se_b,
           sa.mean / NULLIF(sb.mean, 0) AS ratio,
           sa.var / sa.n AS va, sb.var / sb.n AS vb
    FROM stats sa JOIN stats sb ON sa.tag = sb.tag AND sa.grp = ${a} AND sb.grp = ${b}
)
SELECT tag, n_a, n_b, rate_a, rate_b, se_a, se_b, ratio,
       (rate_a - rate_b) / SQRT(NULLIF(va + vb, 0)) AS welch_t,
       (va + vb) * (va + vb)
         / NULLIF(va * va / NULLIF(n_a - 1, 0) + vb * vb / NULLIF(n_b - 1, 0), 0) AS df
FROM joined
-- rounded: ties (equal spreads) must not be broken by float noise differently per engine
ORDER BY ROUND(ABS((rate_a - rate_b) / SQRT(NULLIF(va + vb, 0))), 6) DESC NULLS LAST, tag
LIMIT ${limit}
