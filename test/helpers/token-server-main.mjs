// The token server process (see token-server.ts): node token-server-main.mjs KEY.pem CERT.pem USERS.json LOG.jsonl
// Prints its port on stdout once listening. Checks basic credentials (GET) or OAuth2 refresh tokens
// (POST grant_type=refresh_token; USERS.json's "__refresh" maps tokens to users); issues RS256 JWTs with the
// certificate in the x5c header granting users what they ask for (anonymous callers: nothing);
// appends {user, scopes} of every request to LOG.jsonl.
import { createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

const [keyFile, certFile, usersFile, logFile] = process.argv.slice(2);
const key = createPrivateKey(fs.readFileSync(keyFile));
const der = new X509Certificate(fs.readFileSync(certFile)).raw.toString('base64');
const users = JSON.parse(fs.readFileSync(usersFile, 'utf8'));
/** @param {string | Buffer} b */
const b64url = (b) => Buffer.from(b).toString('base64url');

/**
 * @param {http.ServerResponse} res
 * @param {string | undefined} user
 * @param {string[]} scopes
 * @param {string | null} service
 */
function issue(res, user, scopes, service) {
  const access = user
    ? scopes.map((s) => {
        const [type, name, actions] = s.split(':');
        return { type, name, actions: actions.split(',') };
      })
    : [];
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', x5c: [der] }));
  const claims = b64url(
    JSON.stringify({
      iss: 'ocichunk-test-issuer',
      sub: user ?? '',
      aud: service,
      exp: now + 600,
      nbf: now - 30,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access,
    }),
  );
  const sig = b64url(sign('RSA-SHA256', Buffer.from(`${header}.${claims}`), key));
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ token: `${header}.${claims}.${sig}`, access_token: `${header}.${claims}.${sig}`, expires_in: 600 }));
}

const server = http.createServer((req, res) => {
  const u = new URL(req.url ?? '/', 'http://x');
  if (req.method === 'POST') {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const f = new URLSearchParams(body);
      const scopes = (f.get('scope') ?? '').split(' ').filter(Boolean);
      const user = users.__refresh?.[f.get('refresh_token') ?? ''];
      fs.appendFileSync(logFile, JSON.stringify({ user, scopes, ok: !!user, grant: f.get('grant_type') }) + '\n');
      if (f.get('grant_type') !== 'refresh_token' || !user) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ details: 'bad refresh token' }));
        return;
      }
      issue(res, user, scopes, f.get('service'));
    });
    return;
  }
  const scopes = u.searchParams.getAll('scope');
  let user;
  const auth = req.headers.authorization;
  if (auth?.startsWith('Basic ')) {
    const [name, ...rest] = Buffer.from(auth.slice(6), 'base64').toString().split(':');
    fs.appendFileSync(logFile, JSON.stringify({ user: name, scopes, ok: users[name] === rest.join(':') }) + '\n');
    if (users[name] !== rest.join(':')) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ details: 'wrong password' }));
      return;
    }
    user = name;
  } else fs.appendFileSync(logFile, JSON.stringify({ scopes, ok: true }) + '\n');
  issue(res, user, scopes, u.searchParams.get('service'));
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`${/** @type {import('node:net').AddressInfo} */ (server.address()).port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
