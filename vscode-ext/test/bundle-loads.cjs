// The packaged bundle must load on its own: every module it needs is inside it
// (a dependency esbuild could not follow fails here, as it would fail to
// activate in the editor). vscode is stubbed: only loading is checked here.
const Module = require('node:module');
const assert = require('node:assert/strict');
const load = Module._load;
Module._load = function (request, ...rest) {
  if (request === 'vscode') return new Proxy({}, { get: () => function () { return {}; } });
  return load.call(this, request, ...rest);
};
const ext = require(require('node:path').join(__dirname, '..', 'dist', 'extension.js'));
assert.equal(typeof ext.activate, 'function', 'activate is exported');
assert.equal(typeof ext.deactivate, 'function', 'deactivate is exported');
console.log('bundle: dist/extension.js loads; activate and deactivate exported');
