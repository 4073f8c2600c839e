// Parse LogQL queries with Grafana's own grammar (@grafana/lezer-logql).
// Usage: node logql_parse.mjs <dir holding node_modules> < queries.json
// stdin: JSON array of strings; stdout: JSON array of {query, errors: [{from, to, near}]}.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.argv[2], "package.json"));
const { parser } = require("@grafana/lezer-logql");

const queries = JSON.parse(readFileSync(0, "utf8"));
const results = queries.map((query) => {
  const errors = [];
  const tree = parser.parse(query);
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push({ from: node.from, to: node.to, near: query.slice(Math.max(0, node.from - 10), node.to + 10) });
      }
    },
  });
  return { query, top: tree.topNode.name, errors };
});
process.stdout.write(JSON.stringify(results));
