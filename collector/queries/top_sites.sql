-- name: top-sites
-- description: Fleet top sites: bytes per site (file+function) summed over every host's
-- description: latest snapshot; hosts = how many hosts have it, max_site_bytes = the largest
-- description: single allocinfo line of it on one host.
-- param: limit int 20 how many sites
-- param: label str '' only hosts with this label (KEY=VALUE)
--
-- The distinct-host count is the expensive aggregate (5M rows at 1,000 hosts); it is computed
-- only for the top LIMIT sites, after ranking by the cheap sums.
WITH latest AS (
    SELECT hostname, MAX(taken_at) AS taken_at
    FROM {hosts}
    WHERE ${label_key} = '' OR labels[${label_key}] = ${label_value}
    GROUP BY hostname
),
cur AS (
    SELECT a.hostname, a.loose_key, a.subsystem, a.bytes, a.calls
    FROM {allocinfo} a
    JOIN latest l ON a.hostname = l.hostname AND a.taken_at = l.taken_at
),
top AS (
    SELECT loose_key, MIN(subsystem) AS subsystem, SUM(bytes) AS bytes, SUM(calls) AS calls
    FROM cur
    GROUP BY loose_key
    ORDER BY bytes DESC, loose_key
    LIMIT ${limit}
),
spread AS (
    SELECT c.loose_key, COUNT(DISTINCT c.hostname) AS hosts, MAX(c.bytes) AS max_site_bytes
    FROM cur c JOIN top t ON c.loose_key = t.loose_key
    GROUP BY c.loose_key
)
SELECT t.loose_key AS site, t.subsystem, s.hosts, t.bytes, t.calls, s.max_site_bytes
FROM top t JOIN spread s ON t.loose_key = s.loose_key
ORDER BY bytes DESC, site
