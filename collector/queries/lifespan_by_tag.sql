-- name: lifespan-by-tag
-- description: Lifespans per tag (or site) across the fleet (lifespan dataset, every committed
-- description: interval): freed calls with a 95% interval, the calls-weighted mean lifespan,
-- description: and p50/p90/p99 of the summed log2 histograms (geometric inside a bucket, as
-- description: collector/lifespan_stats.py); n_eff = Kish's effective sampled objects.
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: limit int 20 how many tags (most freed calls first)
--
-- The mean's and the quantiles' intervals (order statistics over the buckets on the objects'
-- or, conservatively, the kept addresses' effective number, from the addr rows) are
-- computed from the same sums by the report (collector/report_fleet.py); SQL gives the
-- point values.
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
rows_ AS (
    SELECT key, COUNT(DISTINCT hostname) AS hosts,
           SUM(freed_calls) AS freed_calls, SUM(freed_calls_var) AS freed_calls_var,
           SUM(lifespan_mean_ns * lifespan_calls) / NULLIF(SUM(lifespan_calls), 0) AS mean_ns,
           CAST(MAX(sample_rate * POWER(2, addr_shift)) AS DOUBLE) AS point
    FROM life WHERE row_kind = 'row' GROUP BY key
),
hist AS (
    SELECT key, slot, SUM(hist_calls) AS w, SUM(hist_calls_var) AS w2
    FROM life WHERE row_kind = 'hist' GROUP BY key, slot
),
cum AS (
    SELECT key, slot, w, w2,
           SUM(w) OVER (PARTITION BY key ORDER BY slot ROWS UNBOUNDED PRECEDING) AS cw,
           SUM(w) OVER (PARTITION BY key) AS tw
    FROM hist WHERE w > 0
),
q AS (
    SELECT key, SUM(w) * SUM(w) / NULLIF(SUM(w2), 0) AS n_eff,
           MIN(CASE WHEN cw >= 0.5 * tw AND cw - w < 0.5 * tw THEN slot + (0.5 * tw - (cw - w)) / w END) AS x50,
           MIN(CASE WHEN cw >= 0.9 * tw AND cw - w < 0.9 * tw THEN slot + (0.9 * tw - (cw - w)) / w END) AS x90,
           MIN(CASE WHEN cw >= 0.99 * tw AND cw - w < 0.99 * tw THEN slot + (0.99 * tw - (cw - w)) / w END) AS x99
    FROM cum GROUP BY key
)
SELECT r.key AS tag, r.hosts,
       r.freed_calls,
       CASE WHEN r.freed_calls <= 0 THEN 0.0 WHEN r.freed_calls_var <= 0 THEN r.freed_calls
            ELSE LEAST(r.freed_calls, r.freed_calls * POWER(GREATEST(0.0, 1 - 1 / (9 * (r.freed_calls * r.freed_calls / r.freed_calls_var))
              - 1.959963984540054 / (3 * SQRT((r.freed_calls * r.freed_calls / r.freed_calls_var)))), 3)) END AS freed_calls_low,
       CASE WHEN r.freed_calls <= 0 THEN GREATEST(1.0, r.point / 8.0) * POWER(1 - 1.0 / 9 + 1.959963984540054 / 3, 3)
            WHEN r.freed_calls_var <= 0 THEN r.freed_calls
            ELSE GREATEST(r.freed_calls, ((r.freed_calls * r.freed_calls / r.freed_calls_var) + 1) * POWER(GREATEST(0.0, 1 - 1 / (9 * ((r.freed_calls * r.freed_calls / r.freed_calls_var) + 1))
              + 1.959963984540054 / (3 * SQRT((r.freed_calls * r.freed_calls / r.freed_calls_var) + 1))), 3) * r.freed_calls_var / r.freed_calls) END AS freed_calls_high,
       r.mean_ns, q.n_eff,
       CASE WHEN q.x50 < 1 THEN 2 * q.x50 ELSE POWER(2, q.x50) END AS p50_ns,
       CASE WHEN q.x90 < 1 THEN 2 * q.x90 ELSE POWER(2, q.x90) END AS p90_ns,
       CASE WHEN q.x99 < 1 THEN 2 * q.x99 ELSE POWER(2, q.x99) END AS p99_ns
FROM rows_ r LEFT JOIN q ON r.key = q.key
ORDER BY r.freed_calls DESC, tag
LIMIT ${limit}
