-- SESSION windows: each bidder's bursts of activity, a burst ending after 2 seconds
-- without a bid from that bidder.
CREATE MATERIALIZED VIEW bursts AS
SELECT window_start, window_end, bidder, count(*) AS bids, max(price) AS top
FROM SESSION(bid, date_time, INTERVAL '2' SECOND)
GROUP BY window_start, window_end, bidder;
-- oracle
WITH o AS (
  SELECT bidder, price, CAST(date_time AS BIGINT) AS t,
         lag(CAST(date_time AS BIGINT)) OVER (PARTITION BY bidder ORDER BY date_time) AS prev
  FROM bid),
s AS (
  SELECT bidder, price, t,
         sum(CASE WHEN prev IS NULL OR t - prev >= 2000 THEN 1 ELSE 0 END)
           OVER (PARTITION BY bidder ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid
  FROM o)
SELECT to_timestamp_millis(min(t)) AS window_start, to_timestamp_millis(max(t) + 2000) AS window_end,
       bidder, count(*) AS bids, max(price) AS top
FROM s GROUP BY bidder, sid;
