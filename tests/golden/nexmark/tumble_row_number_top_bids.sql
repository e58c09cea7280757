-- Top-N per window with row_number(): the three highest bids of each 10-second window.
CREATE MATERIALIZED VIEW top_bids AS
SELECT window_start, auction, bidder, price FROM (
  SELECT window_start, auction, bidder, price,
         row_number() OVER (PARTITION BY window_start ORDER BY price DESC, bidder, auction) AS rn
  FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND))
WHERE rn <= 3;
-- oracle
SELECT window_start, auction, bidder, price FROM (
  SELECT date_bin(INTERVAL '10 seconds', date_time) AS window_start, auction, bidder, price,
         row_number() OVER (PARTITION BY date_bin(INTERVAL '10 seconds', date_time)
                            ORDER BY price DESC, bidder, auction) AS rn
  FROM bid)
WHERE rn <= 3;
