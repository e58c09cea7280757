-- An interval join: bids placed within 50 ms of their auction's opening, with the
-- seller (Nexmark's bidders favour the newest auctions). Rows are kept only until the
-- watermark passes their bound.
CREATE MATERIALIZED VIEW early_bids AS
SELECT B.auction, B.bidder, B.price, A.seller
FROM bid AS B JOIN auction AS A ON B.auction = A.id
AND B.date_time BETWEEN A.date_time AND A.date_time + INTERVAL '50' MILLISECOND;
-- oracle
SELECT B.auction, B.bidder, B.price, A.seller
FROM bid AS B JOIN auction AS A ON B.auction = A.id
AND B.date_time BETWEEN A.date_time AND A.date_time + INTERVAL '50' MILLISECOND;
