-- name: overhead-join
-- description: overhead results joined with allocinfo totals (host's last snapshot at or
-- description: before the measurement) and the host's group label.
-- param: key str group the label shown as the host's group
-- param: function str '' one allocator function (default: all)
WITH res AS (
    SELECT DISTINCT hostname, taken_at FROM {overhead}
),
snap AS (
    SELECT r.hostname, r.taken_at, MAX(h.taken_at) AS snap_at
    FROM res r JOIN {hosts} h ON h.hostname = r.hostname AND h.taken_at <= r.taken_at
    GROUP BY r.hostname, r.taken_at
)
SELECT o.hostname, o.labels[${key}] AS grp, o.mem_profiling, o.taken_at AS measured_at,
       o.function, o.inclusive_share, o.self_share, o.ns_per_call, o.calls_per_second,
       h.total_bytes AS allocinfo_bytes, h.sites AS allocinfo_sites
FROM {overhead} o
LEFT JOIN snap s ON o.hostname = s.hostname AND o.taken_at = s.taken_at
LEFT JOIN {hosts} h ON h.hostname = s.hostname AND h.taken_at = s.snap_at
WHERE o.function IS NOT NULL AND (o.present IS NULL OR o.present)
  AND (${function} = '' OR o.function = ${function})
ORDER BY o.hostname, o.taken_at, o.function
