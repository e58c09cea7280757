-- Nexmark q7 (highest bid), in the join form of nexmark-flink: the bids whose price is
-- the highest of their 10-second window.
CREATE MATERIALIZED VIEW q7 AS
SELECT b.auction, b.price, b.bidder, b.date_time, b.extra
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) AS b
JOIN (SELECT max(price) AS maxprice, window_start, window_end
      FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
      GROUP BY window_start, window_end) AS m
ON b.window_start = m.window_start AND b.price = m.maxprice;
-- oracle
WITH b AS (SELECT *, date_bin(INTERVAL '10 seconds', date_time) AS window_start FROM bid)
SELECT b.auction, b.price, b.bidder, b.date_time, b.extra
FROM b
JOIN (SELECT max(price) AS maxprice, window_start FROM b GROUP BY window_start) AS m
ON b.window_start = m.window_start AND b.price = m.maxprice;
