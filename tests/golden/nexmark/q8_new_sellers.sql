-- Nexmark q8 (monitor new users): people who opened an auction in the 10-second window
-- in which they registered. A join of two sources on the same TUMBLE window.
CREATE MATERIALIZED VIEW q8 AS
SELECT p.id, p.name, p.window_start
FROM (SELECT id, name, window_start, window_end FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
      GROUP BY id, name, window_start, window_end) AS p
JOIN (SELECT seller, window_start, window_end FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
      GROUP BY seller, window_start, window_end) AS a
ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end;
-- oracle
SELECT p.id, p.name, p.window_start
FROM (SELECT DISTINCT id, name, date_bin(INTERVAL '10 seconds', date_time) AS window_start FROM person) AS p
JOIN (SELECT DISTINCT seller, date_bin(INTERVAL '10 seconds', date_time) AS window_start FROM auction) AS a
ON p.id = a.seller AND p.window_start = a.window_start;
