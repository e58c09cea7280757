-- Nexmark q5 (hot items), in the subquery form of nexmark-flink: per 10-second window
-- sliding every 2 seconds, the auctions with the most bids. The join and the aggregate
-- over an aggregate stay inside one window, so the view runs the query per closed window.
CREATE MATERIALIZED VIEW q5 AS
SELECT a.auction, a.num, a.window_start, a.window_end
FROM (SELECT auction, count(*) AS num, window_start, window_end
      FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
      GROUP BY auction, window_start, window_end) AS a
JOIN (SELECT max(c.num) AS maxn, c.window_start, c.window_end
      FROM (SELECT count(*) AS num, window_start, window_end
            FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
            GROUP BY auction, window_start, window_end) AS c
      GROUP BY c.window_start, c.window_end) AS m
ON a.window_start = m.window_start AND a.window_end = m.window_end AND a.num >= m.maxn;
-- oracle
WITH h AS (
  SELECT to_timestamp_millis(ws) AS window_start, to_timestamp_millis(ws + 10000) AS window_end,
         auction, count(*) AS num
  FROM (SELECT auction, (CAST(date_time AS BIGINT) - CAST(date_time AS BIGINT) % 2000) - k * 2000 AS ws
        FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS o(k))
  GROUP BY ws, auction)
SELECT a.auction, a.num, a.window_start, a.window_end
FROM h AS a
JOIN (SELECT max(num) AS maxn, window_start, window_end FROM h GROUP BY window_start, window_end) AS m
ON a.window_start = m.window_start AND a.window_end = m.window_end AND a.num >= m.maxn;
