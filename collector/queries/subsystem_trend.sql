-- name: subsystem-trend
-- description: Bytes per subsystem over time, for one host or the hosts with a label (mean
-- description: per host when several hosts fall in one time bucket).
-- param: host str '' one host (default: every host)
-- param: label str '' only hosts with this label (KEY=VALUE)
-- param: bucket str hour time bucket: minute, hour, day
WITH snaps AS (
    SELECT hostname, taken_at
    FROM {hosts}
    WHERE (${host} = '' OR hostname = ${host})
      AND (${label_key} = '' OR labels[${label_key}] = ${label_value})
),
per_snapshot AS (
    SELECT a.hostname, a.taken_at, a.subsystem, SUM(a.bytes) AS bytes
    FROM {allocinfo} a
    JOIN snaps s ON a.hostname = s.hostname AND a.taken_at = s.taken_at
    WHERE ${host} = '' OR a.hostname = ${host}
    GROUP BY a.hostname, a.taken_at, a.subsystem
)
SELECT date_trunc(${bucket}, taken_at) AS time,
       subsystem,
       COUNT(DISTINCT hostname) AS hosts,
       COUNT(*) AS snapshots,
       AVG(bytes) AS bytes_per_host
FROM per_snapshot
GROUP BY date_trunc(${bucket}, taken_at), subsystem
ORDER BY time, subsystem
