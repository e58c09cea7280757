// The SQL editor: CodeMirror 6 with completion from the live catalog, Ctrl+Enter to
// run, errors underlined where the server says they are, and a history kept in the
// browser.
const V = window.WeirVendor;

const HISTORY_KEY = "weir.history";
const HISTORY_MAX = 50;

/** weir's words that are not standard SQL, offered beside the catalog. */
const WEIR_WORDS = [
  ["TUMBLE", "TUMBLE(source, time_column, INTERVAL '10' SECOND)"],
  ["HOP", "HOP(source, time_column, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"],
  ["SESSION", "SESSION(source, time_column, INTERVAL '30' SECOND)"],
  ["MATERIALIZED", "CREATE MATERIALIZED VIEW name AS SELECT ..."],
  ["window_start", "the start of a row's window"],
  ["window_end", "the end of a row's window"],
];

/**
 * An editor in `parent`. `onRun(text)` on Ctrl+Enter, `onPreview(text)` on
 * Ctrl+Shift+Enter. Returns its controls.
 */
export function createEditor(parent, { initial = "", onRun, onPreview }) {
  let functions = [];
  const language = new V.Compartment();
  const theme = new V.Compartment();
  const dark = window.matchMedia("(prefers-color-scheme: dark)");
  const completeWeir = (context) => {
    const word = context.matchBefore(/\w+/);
    if (!word || (word.from === word.to && !context.explicit)) return null;
    return {
      from: word.from,
      options: [
        ...functions.map((f) => ({ label: f.name, type: "function", detail: f.detail, boost: 1 })),
        ...WEIR_WORDS.map(([label, info]) => ({ label, type: "keyword", info })),
      ],
    };
  };
  const sqlFor = (schema) => [
    V.sql({ dialect: V.StandardSQL, schema, upperCaseKeywords: true }),
    V.StandardSQL.language.data.of({ autocomplete: completeWeir }),
  ];
  const keys = V.keymap.of([
    { key: "Mod-Enter", run: () => { onRun(view.state.doc.toString()); return true; } },
    { key: "Mod-Shift-Enter", run: () => { onPreview(view.state.doc.toString()); return true; } },
  ]);
  const view = new V.EditorView({
    parent,
    state: V.EditorState.create({
      doc: initial,
      extensions: [
        keys,
        V.basicSetup,
        V.lintGutter(),
        language.of(sqlFor({})),
        theme.of(dark.matches ? V.oneDark : []),
        V.EditorView.contentAttributes.of({ "aria-label": "SQL statement", "aria-multiline": "true" }),
        V.EditorView.updateListener.of((u) => {
          // An edit clears the old error: it may no longer be where it was.
          if (u.docChanged) view.dispatch(V.setDiagnostics(u.state, []));
        }),
      ],
    }),
  });
  dark.addEventListener("change", () => {
    view.dispatch({ effects: theme.reconfigure(dark.matches ? V.oneDark : []) });
  });

  return {
    view,
    text: () => view.state.doc.toString(),
    setText(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
      view.focus();
    },
    focus: () => view.focus(),
    /** Tables (sources, streams, views) with their columns, and plugin functions. */
    setCatalog(tables, fns) {
      functions = fns;
      view.dispatch({ effects: language.reconfigure(sqlFor(tables)) });
    },
    /** Underline the error at the server's position (or the end, for "found: EOF"). */
    showError(message, position) {
      const doc = view.state.doc;
      let from, to;
      if (position) {
        from = offset(doc, position.line, position.column);
        to = offset(doc, position.end_line || position.line, position.end_column || position.column + 1);
      } else if (/EOF/.test(message)) {
        from = Math.max(0, doc.length - 1);
        to = doc.length;
      } else {
        return false;
      }
      if (to <= from) to = Math.min(doc.length, from + 1);
      view.dispatch(V.setDiagnostics(view.state, [{ from, to, severity: "error", message }]));
      return true;
    },
    clearError() {
      view.dispatch(V.setDiagnostics(view.state, []));
    },
  };
}

/** A 1-based line and column as an offset into the document, kept inside it. */
function offset(doc, line, column) {
  const l = doc.line(Math.min(Math.max(1, line), doc.lines));
  return Math.min(l.to, l.from + Math.max(0, column - 1));
}

/** Statements run before, newest first. */
export function history() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch { return []; }
}

export function remember(sql) {
  const text = sql.trim();
  if (!text) return;
  const kept = [text, ...history().filter((s) => s !== text)].slice(0, HISTORY_MAX);
  localStorage.setItem(HISTORY_KEY, JSON.stringify(kept));
}

/** Example statements for each connector and the common queries. */
export const EXAMPLES = [
  ["Nexmark source (built-in generator)",
    "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', rate = 1000, start_time = 'now')"],
  ["HTTP source (POST JSON to /api/v1/sources/events/records)",
    "CREATE SOURCE events (\n  user_id BIGINT,\n  action VARCHAR,\n  ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH (connector = 'http')"],
  ["File source (newline-delimited JSON in the files dir)",
    "CREATE SOURCE old_clicks (\n  user_id BIGINT, page VARCHAR, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND\n) WITH (connector = 'file', path = 'clicks.jsonl')"],
  ["Kafka source",
    "CREATE SOURCE orders (\n  id BIGINT, amount DOUBLE, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND\n) WITH (connector = 'kafka', brokers = '127.0.0.1:9092', topic = 'orders', start = 'earliest')"],
  ["Kinesis source (credentials from the AWS default chain)",
    "CREATE SOURCE clicks (\n  user_id BIGINT, page VARCHAR,\n  at TIMESTAMP METADATA FROM 'arrival_time',\n  WATERMARK FOR at AS at - INTERVAL '5' SECOND\n) WITH (connector = 'kinesis', stream = 'clicks', region = 'eu-west-1')"],
  ["Preview: bids over 1,000 (Ctrl+Shift+Enter)",
    "SELECT auction, bidder, price, channel FROM bids WHERE price > 1000"],
  ["View: bids per channel every 10 seconds",
    "CREATE MATERIALIZED VIEW bids_10s AS\nSELECT window_start, window_end, channel, count(*) AS bids, max(price) AS top\nFROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)\nGROUP BY window_start, window_end, channel"],
  ["View: updating aggregate per auction",
    "CREATE MATERIALIZED VIEW per_auction AS\nSELECT auction, count(*) AS bids, max(price) AS top FROM bids GROUP BY auction"],
  ["Kafka sink of a view",
    "CREATE SINK bids_out FROM bids_10s WITH (connector = 'kafka', brokers = '127.0.0.1:9092', topic = 'bids_10s')"],
  ["Kinesis sink of a view",
    "CREATE SINK bids_stream FROM bids_10s WITH (connector = 'kinesis', stream = 'bids-10s', region = 'eu-west-1', partition_key = 'channel')"],
  ["PostgreSQL sink (exactly once: upserts by key)",
    "CREATE SINK auctions_pg FROM per_auction WITH (connector = 'postgres', url = 'postgres://weir@127.0.0.1:5432/app', table = 'per_auction', key = 'auction')"],
  ["Redis sink (a key per row)",
    "CREATE SINK auctions_redis FROM per_auction WITH (connector = 'redis', url = 'redis://127.0.0.1:6379/0', key = 'auction:{auction}', value = 'hash')"],
  ["DynamoDB sink (the table must exist)",
    "CREATE SINK auctions_ddb FROM per_auction WITH (connector = 'dynamodb', table = 'per_auction', region = 'eu-west-1', partition_key = 'auction')"],
  ["Parquet files sink (a directory or s3://bucket/prefix)",
    "CREATE SINK bids_lake FROM bids_10s WITH (connector = 'files', path = '/var/lib/weir/lake/bids_10s', partition_by = 'channel')"],
  ["Query a view", "SELECT * FROM bids_10s ORDER BY window_start DESC LIMIT 20"],
];
