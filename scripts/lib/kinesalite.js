// Starts kinesalite (a Kinesis endpoint) on 127.0.0.1 only: its own command line binds
// every interface. Usage: node kinesalite.js PORT [MODULES_DIR]
//
// For fault tests it also answers POST /__weir/faults with a JSON body
// {"stream": "s", "fault": F, "count": N}, for the next N calls on that stream:
//   throttle      GetRecords is throttled (ProvisionedThroughputExceededException)
//   expire        GetRecords carries an iterator made six minutes old, which kinesalite
//                 then refuses as expired, as Kinesis does after five minutes
//   throttle_put  PutRecords is throttled as a whole
//   partial       PutRecords puts only the records at even places; the others come back
//                 failed (ProvisionedThroughputExceededException), a partial failure
// Faults are per stream, so tests sharing this endpoint do not see each other's.
// GET /__weir/calls?stream=s answers when each GetRecords call on the stream's shards
// came: {"shardId-...": [ms since the epoch, ...]} (Kinesis allows 5 a second a shard).
const path = require('path');
const http = require('http');
const crypto = require('crypto');
const { Readable } = require('stream');

const port = parseInt(process.argv[2], 10);
const modules = process.argv[3] || path.join(__dirname, 'node_modules');
// kinesalite never answers GetShardIterator AT_TIMESTAMP when no record of the shard
// is at or after the timestamp (its scan of the shard ends without a reply); Kinesis
// then gives an iterator at the shard's tip. So AT_TIMESTAMP is answered here: an
// iterator as LATEST gives it, taken first, then the shard scanned for the first record
// at or after the timestamp, and the LATEST one if there is none (a record put during
// the scan comes after that tip, so it is not skipped). Patched before kinesalite loads
// its actions.
const kinesaliteDb = require(path.join(modules, 'kinesalite', 'db'));
const shardIteratorFile = require.resolve(path.join(modules, 'kinesalite', 'actions', 'getShardIterator'));
const getShardIterator = require(shardIteratorFile);
require.cache[shardIteratorFile].exports = function atTimestampAnswers(store, data, cb) {
  if (data.ShardIteratorType !== 'AT_TIMESTAMP' || data.Timestamp == null || data.Timestamp * 1000 > Date.now()) {
    return getShardIterator(store, data, cb);
  }
  const latest = { ...data, ShardIteratorType: 'LATEST' };
  delete latest.Timestamp;
  getShardIterator(store, latest, (err, tip) => {
    if (err) return cb(err);
    const { shardId, shardIx } = kinesaliteDb.resolveShardId(data.ShardId);
    const records = store.getStreamDb(data.StreamName).createReadStream({
      gt: kinesaliteDb.shardIxToHex(shardIx),
      lt: kinesaliteDb.shardIxToHex(shardIx + 1),
    });
    let answered = false;
    records.on('data', (item) => {
      if (answered || item.value.ApproximateArrivalTimestamp < data.Timestamp) return;
      answered = true;
      records.destroy();
      cb(null, { ShardIterator: kinesaliteDb.createShardIterator(data.StreamName, shardId, item.key.split('/')[1]) });
    });
    records.on('error', (e) => {
      if (!answered) {
        answered = true;
        cb(e);
      }
    });
    records.on('end', () => {
      if (!answered) {
        answered = true;
        cb(null, tip);
      }
    });
  });
};
const kinesalite = require(path.join(modules, 'kinesalite'));
const db = require(path.join(modules, 'kinesalite', 'db'));

const server = kinesalite({ createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 1000 });
const handle = server.listeners('request')[0];
server.removeAllListeners('request');
const faults = new Map(); // stream -> {fault, count}
const calls = new Map(); // stream -> {shard: [ms, ...]}

function decodeIterator(iterator) {
  try {
    const buffer = Buffer.from(iterator, 'base64');
    const decipher = crypto.createDecipheriv('aes-256-cbc', db.ITERATOR_PWD_KEY, db.ITERATOR_PWD_IV);
    return Buffer.concat([decipher.update(buffer.slice(8)), decipher.final()]).toString('utf8').split('/');
  } catch (e) {
    return null;
  }
}

function encodeIterator(pieces) {
  const cipher = crypto.createCipheriv('aes-256-cbc', db.ITERATOR_PWD_KEY, db.ITERATOR_PWD_IV);
  return Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 1]), cipher.update(pieces.join('/'), 'utf8'), cipher.final()]).toString('base64');
}

function throttled(res, message) {
  res.statusCode = 400;
  res.setHeader('Content-Type', 'application/x-amz-json-1.1');
  res.setHeader('x-amzn-RequestId', crypto.randomUUID());
  res.end(JSON.stringify({ __type: 'ProvisionedThroughputExceededException', message }));
}

// Put the records at even places (through this server, as any client would) and
// answer as Kinesis does for a partial failure.
function partial(req, res, data) {
  const kept = data.Records.filter((_, i) => i % 2 === 0);
  const body = Buffer.from(JSON.stringify({ ...data, Records: kept }));
  const headers = { ...req.headers, 'content-length': body.length };
  const inner = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/', headers }, (answer) => {
    const parts = [];
    answer.on('data', (c) => parts.push(c));
    answer.on('end', () => {
      const put = JSON.parse(Buffer.concat(parts).toString('utf8'));
      if (answer.statusCode !== 200) {
        res.statusCode = answer.statusCode;
        return res.end(JSON.stringify(put));
      }
      let next = 0;
      const records = data.Records.map((_, i) => i % 2 === 0 ? put.Records[next++] : {
        ErrorCode: 'ProvisionedThroughputExceededException',
        ErrorMessage: 'Rate exceeded for shard in stream ' + data.StreamName,
      });
      res.setHeader('Content-Type', 'application/x-amz-json-1.1');
      res.setHeader('x-amzn-RequestId', crypto.randomUUID());
      res.end(JSON.stringify({ FailedRecordCount: records.length - kept.length, Records: records }));
    });
  });
  inner.end(body);
}

function replay(req, res, body) {
  const copy = Readable.from(body.length ? [body] : []);
  copy.headers = req.headers;
  copy.method = req.method;
  copy.url = req.url;
  handle(copy, res);
}

server.on('request', (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = Buffer.concat(chunks);
    if (req.url.startsWith('/__weir/calls')) {
      const stream = new URL(req.url, 'http://x').searchParams.get('stream');
      res.setHeader('Content-Type', 'application/json');
      return res.end(JSON.stringify(calls.get(stream) || {}));
    }
    if (req.url === '/__weir/faults') {
      const f = JSON.parse(body.toString('utf8'));
      faults.set(f.stream, { fault: f.fault, count: f.count });
      res.statusCode = 204;
      return res.end();
    }
    const target = req.headers['x-amz-target'] || '';
    if (faults.size && target.endsWith('.PutRecords')) {
      const data = JSON.parse(body.toString('utf8'));
      const f = faults.get(data.StreamName);
      if (f && f.count > 0 && (f.fault === 'throttle_put' || f.fault === 'partial')) {
        f.count -= 1;
        if (f.fault === 'throttle_put') {
          return throttled(res, 'Rate exceeded for stream ' + data.StreamName);
        }
        return partial(req, res, data);
      }
    }
    if (target.endsWith('.GetRecords')) {
      const data = JSON.parse(body.toString('utf8'));
      const pieces = decodeIterator(data.ShardIterator || '');
      if (pieces) {
        const byShard = calls.get(pieces[1]) || {};
        (byShard[pieces[2]] = byShard[pieces[2]] || []).push(Date.now());
        calls.set(pieces[1], byShard);
      }
      const f = pieces && faults.get(pieces[1]);
      if (f && f.count > 0 && (f.fault === 'throttle' || f.fault === 'expire')) {
        f.count -= 1;
        if (f.fault === 'throttle') {
          return throttled(res, 'Rate exceeded for shard ' + pieces[2] + ' in stream ' + pieces[1]);
        }
        pieces[0] = ('0000000000000' + (parseInt(pieces[0], 10) - 360000)).slice(-14);
        data.ShardIterator = encodeIterator(pieces);
        body = Buffer.from(JSON.stringify(data));
      }
    }
    replay(req, res, body);
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log('kinesalite listening at http://127.0.0.1:' + port);
});
