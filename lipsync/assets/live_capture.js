// Audio worklet of the live page: hands each block of microphone samples to the page.
class LipsyncCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("lipsync-capture", LipsyncCapture);
