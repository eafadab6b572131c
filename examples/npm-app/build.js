// Writes a table of odd and even numbers with is-odd (which needs is-number) into /out.
'use strict';
const fs = require('fs');
const path = require('path');
const isOdd = require('is-odd');

const out = process.argv[2] || 'dist';
fs.mkdirSync(out, { recursive: true });
const lines = [];
for (let n = 0; n < 10; n++) {
  lines.push(`${n} ${isOdd(n) ? 'odd' : 'even'}`);
}
const file = path.join(out, 'parity.txt');
fs.writeFileSync(file, lines.join('\n') + '\n');
// Its mode explicitly: left to the umask, it differs between machines.
fs.chmodSync(file, 0o644);
