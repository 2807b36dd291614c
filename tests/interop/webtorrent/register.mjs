// Loaded with `node --import ./register.mjs`: routes the client's WebRTC
// module to fake-webrtc.mjs (see there for why).
import { register } from 'node:module'

register('./hooks.mjs', import.meta.url)
