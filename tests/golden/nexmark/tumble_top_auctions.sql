-- Top-N per window: the three auctions with the most bids in each 10-second window
-- (the ranking Nexmark q5 does; ties broken by auction id).
CREATE MATERIALIZED VIEW top AS
SELECT window_start, window_end, auction, count(*) AS num
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, auction
ORDER BY num DESC, auction
LIMIT 3;
-- oracle
SELECT window_start, window_end, auction, num FROM (
  SELECT window_start, window_end, auction, num,
         row_number() OVER (PARTITION BY window_start ORDER BY num DESC, auction) AS rank
  FROM (SELECT date_bin(INTERVAL '10 seconds', date_time) AS window_start,
               date_bin(INTERVAL '10 seconds', date_time) + INTERVAL '10 seconds' AS window_end,
               auction, count(*) AS num
        FROM bid GROUP BY 1, 2, 3))
WHERE rank <= 3;
