#!/usr/bin/env node
// A SIGINT or SIGTERM while the command is still loading (nothing started, nothing written) ends
// the process as the command's own handling would: exit 130 or 143. The first handler a command
// installs (stopping its work cleanly, unmounting) takes over: these go then.
/** @param {NodeJS.Signals} sig */
const early = (sig) => {
  process.stderr.write(`ocichunk: ${sig} before the command started; nothing was done\n`);
  process.exit(sig === 'SIGINT' ? 130 : 143);
};
/** @param {string | symbol} event */
const takeOver = (event) => {
  if (event !== 'SIGINT' && event !== 'SIGTERM') return;
  process.off('newListener', takeOver);
  // once the command's listener is in (removing the last listener of a signal first would leave
  // the signal unwatched: Node watches a signal from its first listener on)
  process.nextTick(() => {
    process.off('SIGINT', early);
    process.off('SIGTERM', early);
  });
};
process.on('SIGINT', early);
process.on('SIGTERM', early);
process.on('newListener', takeOver);

const { main } = await import('../dist/cli/main.js');
main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
