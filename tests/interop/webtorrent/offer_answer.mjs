// Two npm bittorrent-tracker clients exchange an offer and an answer
// through aquatic's WebSocket tracker, then scrape and leave.
//
// Usage: node --import ./register.mjs offer_answer.mjs ws://127.0.0.1:PORT
// Prints PASS or FAIL lines, exits non-zero on failure.

import Client from 'bittorrent-tracker'
import { created, received } from './fake-webrtc.mjs'

const url = process.argv[2]
const infoHash = 'aa'.repeat(10) + '0102030405060708090a'
const peerA = '2d5757303130352d' + 'a1'.repeat(12)
const peerB = '2d5757303130352d' + 'b2'.repeat(12)
const TIMEOUT = 20000

function client (peerId, path) {
  // Clients share one WebSocket per tracker URL; distinct paths give each
  // its own connection, as two browsers would have.
  const c = new Client({ infoHash, peerId, announce: [`${url}/${path}`], port: 6881, getAnnounceOpts: () => ({ numwant: 5 }) })
  c.on('warning', err => console.log(`  (warning from ${peerId.slice(-4)}: ${err.message})`))
  c.on('error', err => console.log(`  (error from ${peerId.slice(-4)}: ${err.message})`))
  return c
}

function waitFor (emitter, event, predicate, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), TIMEOUT)
    const listener = (...args) => {
      if (!predicate(...args)) return
      clearTimeout(timer)
      emitter.removeListener(event, listener)
      resolve(args[0])
    }
    emitter.on(event, listener)
  })
}

let failed = 0
let passed = 0
function check (name, ok, detail = '') {
  if (ok) { passed++; console.log(`PASS ${name}`) } else { failed++; console.log(`FAIL ${name} ${detail}`) }
}

async function main () {
  const a = client(peerA, 'a')
  const aUpdate = waitFor(a, 'update', () => true, "A's announce response")
  a.start()
  const first = await aUpdate
  check('announce response for the first peer', first.incomplete === 1 && first.complete === 0, JSON.stringify(first))

  const b = client(peerB, 'b')
  // A is offered B's connection (A answers it); B gets A's answer.
  const aGetsOffer = waitFor(a, 'peer', peer => peer.id === peerB, "B's offer at A")
  const bGetsAnswer = waitFor(b, 'peer', peer => peer.id === peerA, "A's answer at B")
  b.start()
  await aGetsOffer
  check('offer relayed from B to A with B\'s peer id', true)
  await bGetsAnswer
  check('answer relayed from A back to B with A\'s peer id', true)
  // Let the fake connections record what they were given.
  await new Promise(resolve => setTimeout(resolve, 100))
  const offers = received.filter(r => r.type === 'offer')
  const answers = received.filter(r => r.type === 'answer')
  check('offer SDP arrived verbatim', offers.length >= 1 && offers.every(r => created.get(r.sdp)?.type === 'offer'), JSON.stringify(offers))
  check('answer SDP arrived verbatim', answers.length >= 1 && answers.every(r => created.get(r.sdp)?.type === 'answer'), JSON.stringify(answers))
  check('the answer reached the connection that made the offer',
    answers.every(r => created.get(r.sdp).id !== r.id))

  const scrape = waitFor(b, 'scrape', () => true, 'scrape response')
  b.scrape()
  const figures = await scrape
  check('scrape shows both peers', figures.incomplete === 2, JSON.stringify(figures))

  // A leaves (stopped); B's next scrape sees one peer.
  await new Promise(resolve => a.destroy(resolve))
  let left = null
  for (let i = 0; i < 50 && left !== 1; i++) {
    const s = waitFor(b, 'scrape', () => true, 'scrape response')
    b.scrape()
    left = (await s).incomplete
    if (left !== 1) await new Promise(resolve => setTimeout(resolve, 100))
  }
  check('a peer that leaves is gone from the swarm', left === 1, `incomplete ${left}`)
  await new Promise(resolve => b.destroy(resolve))
}

const deadline = setTimeout(() => { console.log('FAIL overall timeout'); process.exit(1) }, 60000)
main()
  .catch(err => { failed++; console.log(`FAIL ${err.message}`) })
  .finally(() => {
    clearTimeout(deadline)
    console.log(`${passed} passed, ${failed} failed`)
    process.exit(failed === 0 && passed > 0 ? 0 : 1)
  })
