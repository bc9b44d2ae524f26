// The demo shop's api, as a developer would run it on their machine: answers
// GET with who it is and what it sees of the pod's environment (which kbridge
// brings over: config map and secret values), so the test can tell its answers
// from the real pods'.
'use strict';
const http = require('node:http');

const port = Number(process.env.PORT || 8080);

const server = http.createServer((req, res) => {
  const answer = { service: 'api', served_by: 'local-api', pod: 'developer-laptop', path: req.url }; // BREAKPOINT
  answer.route = req.headers['kubernetes-route-as'] || null;
  answer.greeting = process.env.GREETING || null;
  answer.has_api_key = Boolean(process.env.API_KEY);
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(answer));
});

server.listen(port, '127.0.0.1', () => console.log(`local api listening on 127.0.0.1:${port}`));
