-- Nexmark q5 (hot items) in its published form (nexmark-flink, RisingWave): the
-- subqueries rename the window columns (window_start AS starttime) and the join matches
-- the new names. A window column stays the window under any alias, so the view runs the
-- query per closed window as q5_hot_items does.
CREATE MATERIALIZED VIEW q5_published AS
SELECT AuctionBids.auction, AuctionBids.num
FROM (SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
      FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
      GROUP BY auction, window_start, window_end) AS AuctionBids
JOIN (SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
      FROM (SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
            FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
            GROUP BY auction, window_start, window_end) AS CountBids
      GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime AND
   AuctionBids.endtime = MaxBids.endtime AND
   AuctionBids.num >= MaxBids.maxn;
-- oracle
WITH h AS (
  SELECT ws AS starttime, ws + 10000 AS endtime, auction, count(*) AS num
  FROM (SELECT auction, (CAST(date_time AS BIGINT) - CAST(date_time AS BIGINT) % 2000) - k * 2000 AS ws
        FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS o(k))
  GROUP BY ws, auction)
SELECT a.auction, a.num
FROM h AS a
JOIN (SELECT max(num) AS maxn, starttime, endtime FROM h GROUP BY starttime, endtime) AS m
ON a.starttime = m.starttime AND a.endtime = m.endtime AND a.num >= m.maxn;
