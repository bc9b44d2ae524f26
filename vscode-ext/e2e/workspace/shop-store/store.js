// A local copy of the demo shop's store, for the second session of the editor
// test (two Services at once, one per folder of a multi-root workspace).
'use strict';
const http = require('node:http');

const port = Number(process.env.PORT || 8080);
http
  .createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ service: 'store', served_by: 'local-store', path: req.url }));
  })
  .listen(port, '127.0.0.1', () => console.log(`local store listening on 127.0.0.1:${port}`));
