// A WebRTC stand-in that does the signalling half only.
//
// In Node, bittorrent-tracker's client gets WebRTC from node-datachannel,
// whose install script downloads a prebuilt native binary: impossible
// without internet. The tracker never looks inside offers and answers, so
// this fake creates real-looking SDP, records what it is given, and never
// connects. Everything the tracker does (relaying offers to chosen peers,
// answers back to the offerer, ids, counts) is exercised for real.

let next = 0
export const created = new Map() // sdp -> { id, type }
export const received = [] // { id, type, sdp } given to setRemoteDescription

class FakeDataChannel {
  constructor (label) {
    this.label = label
    this.readyState = 'connecting'
    this.binaryType = 'arraybuffer'
    this.bufferedAmount = 0
    this.bufferedAmountLowThreshold = 0
  }

  send () {}
  close () { this.readyState = 'closed' }
}

export class RTCPeerConnection {
  constructor () {
    this.id = next++
    this.signalingState = 'stable'
    this.iceGatheringState = 'new'
    this.iceConnectionState = 'new'
    this.connectionState = 'new'
    this.localDescription = null
    this.remoteDescription = null
  }

  createDataChannel (label) { return new FakeDataChannel(label) }

  async createOffer () { return this._description('offer') }
  async createAnswer () { return this._description('answer') }

  _description (type) {
    const sdp = `v=0\r\no=fake-${type}-${this.id} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n`
    created.set(sdp, { id: this.id, type })
    return { type, sdp }
  }

  async setLocalDescription (description) {
    this.localDescription = description
    this.signalingState = description.type === 'offer' ? 'have-local-offer' : 'stable'
    // No candidates to gather: ICE is complete at once.
    setTimeout(() => {
      this.iceGatheringState = 'complete'
      this.onicegatheringstatechange?.()
      this.onicecandidate?.({ candidate: null })
    }, 0)
  }

  async setRemoteDescription (description) {
    this.remoteDescription = description
    this.signalingState = description.type === 'offer' ? 'have-remote-offer' : 'stable'
    received.push({ id: this.id, type: description.type, sdp: description.sdp })
  }

  async addIceCandidate () {}
  getStats () { return Promise.resolve(new Map()) }
  getSenders () { return [] }
  getTransceivers () { return [] }
  close () { this.signalingState = 'closed' }
}

export class RTCSessionDescription {
  constructor ({ type, sdp }) {
    this.type = type
    this.sdp = sdp
  }
}

export class RTCIceCandidate {
  constructor (init) { Object.assign(this, init) }
}

export default { RTCPeerConnection, RTCSessionDescription, RTCIceCandidate }
