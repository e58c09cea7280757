-- Distinct bidders and mean price per channel in 5-second windows, with HAVING.
CREATE MATERIALIZED VIEW c AS
SELECT window_start, window_end, channel, count(DISTINCT bidder) AS bidders, round(avg(price), 3) AS mean
FROM TUMBLE(bid, date_time, INTERVAL '5' SECOND)
GROUP BY window_start, window_end, channel
HAVING count(*) > 10;
-- oracle
SELECT date_bin(INTERVAL '5 seconds', date_time) AS window_start,
       date_bin(INTERVAL '5 seconds', date_time) + INTERVAL '5 seconds' AS window_end,
       channel, count(DISTINCT bidder) AS bidders, round(avg(price), 3) AS mean
FROM bid GROUP BY 1, 2, 3 HAVING count(*) > 10;
