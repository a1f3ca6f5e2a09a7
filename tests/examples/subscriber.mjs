// The JavaScript client in Node: connect to URL (a path prefix included) with one
// transport, subscribe to `news`, print "subscribed" and then each `notice` as a JSON line.
import { RealtimeClient } from '../../clients/js/realtime.js';

const [url, transport] = process.argv.slice(2);
const realtime = new RealtimeClient(url, { transports: [transport] });
const news = realtime.subscribe('news');
news.on('subscription.succeeded', () => console.log('subscribed'));
news.on('subscription.error', (error) => console.log(JSON.stringify({ error })));
news.on('notice', (data, message) => console.log(JSON.stringify({ id: message.id, data })));
process.stdin.on('end', () => { realtime.disconnect(); process.exit(0); }).resume();
