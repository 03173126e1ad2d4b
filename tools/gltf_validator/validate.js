// Validate .glb files with the Khronos glTF-Validator (npm package "gltf-validator").
// Usage: node validate.js FILE.glb...   Prints a JSON list: per file, the numbers of errors,
// warnings and infos and every message. The package is installed by `make` into .cache/node.
const fs = require("fs");
const path = require("path");
const validator = require(path.join(__dirname, "..", "..", ".cache", "node", "node_modules", "gltf-validator"));

(async () => {
  const reports = [];
  for (const file of process.argv.slice(2)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {maxIssues: 200});
    reports.push({file, errors: report.issues.numErrors, warnings: report.issues.numWarnings,
                  infos: report.issues.numInfos, messages: report.issues.messages});
  }
  console.log(JSON.stringify(reports));
})().catch((err) => { console.error(String(err)); process.exit(1); });
