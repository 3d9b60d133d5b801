// The one translation table of the front end: Simplified Chinese (the operators' language,
// the default) and English. `?lang=zh|en` chooses, and the choice is remembered in
// localStorage. Static labels carry `data-i18n="key"` (text), `data-i18n-aria="key"`
// (aria-label) or `data-i18n-placeholder="key"`; the views call `t(key)` for what they draw.

const STORAGE_KEY = 'sipedge.lang';

const TABLE = {
  zh: {
    'nav.label': '页面',
    'nav.live': '实时监控',
    'nav.query': '业务查询',
    'nav.monitor': '进程监控',
    'lang.switch': '切换语言',
    'health.ok': '节点正常',
    'health.down': '节点异常',
    'health.unknown': '节点状态未知',
    'stream.open': '实时更新中',
    'stream.connecting': '正在连接…',
    'stream.closed': '实时更新已断开，稍后重连',
    loading: '正在加载…',
    'action.view_log': '日志查看',
    'action.close': '关闭',
    'action.copy': '复制',
    'action.dismiss': '关闭提示',

    'error.network': '无法连接到 sipedge，请检查网络',
    'error.not_json': '服务器返回的内容无法识别',
    'error.unauthorized': '需要登录：请刷新页面并输入用户名和密码',
    'error.health': '读取节点状态失败',
    'error.live': '读取实时通话失败',
    'error.query': '查询失败',
    'error.log': '读取通话日志失败',
    'error.alarms': '读取告警失败',
    'error.processes': '读取进程状态失败',

    'live.title': '实时通话',
    'live.hint': '正在进行的每一路通话，实时更新，无需刷新。',
    'live.empty': '当前没有进行中的通话',
    'live.filter': '筛选主叫/被叫号码',
    'live.no_match': '没有号码匹配的通话',
    'live.total': '进行中',
    'live.ringing': '呼叫/振铃',
    'live.connected': '通话中',
    'live.video': '视频通话',

    'col.start_time': '开始时间',
    'col.end_time': '结束时间',
    'col.ring_time': '振铃时间',
    'col.answer_time': '接通时间',
    'col.caller': '主叫号码',
    'col.called': '被叫号码',
    'col.call_type': '通话类型',
    'col.state': '状态',
    'col.status': '接通状态',
    'col.disposition': '结果',
    'col.elapsed': '时长',
    'col.duration': '总时长',
    'col.talk': '通话时长',
    'col.terminal': '终端',
    'col.transport': '传输',
    'col.ended_by': '挂断方',
    'col.call_id': 'Call-ID',
    'col.actions': '操作',

    'type.audio': '语音',
    'type.video': '视频',
    'state.trying': '呼叫中',
    'state.ringing': '振铃',
    'state.connected': '通话中',
    'state.ended': '已结束',
    'status.connected': '接通',
    'status.not_connected': '未接通',
    'disposition.answered': '已接听',
    'disposition.busy': '忙',
    'disposition.declined': '拒接',
    'disposition.no_answer': '无应答',
    'disposition.cancelled': '主叫取消',
    'disposition.failed': '失败',
    'disposition.timeout': '超时结束',
    'ended_by.caller': '主叫',
    'ended_by.callee': '被叫',
    'ended_by.sipedge': 'sipedge（超时）',

    'query.title': '业务查询',
    'q.start': '开始时间',
    'q.end': '结束时间',
    'q.type': '通话类型',
    'q.caller': '主叫号码',
    'q.called': '被叫号码',
    'q.status': '接通状态',
    'q.any': '全部',
    'q.number_hint': '号码末尾加 * 表示按前缀匹配，例如 1380*',
    'q.time_hint': '时间格式：年-月-日 时:分:秒（本节点时区），例如 2026-11-28 08:30:00',
    'q.bad_time': '请按 年-月-日 时:分:秒 填写，例如 2026-11-28 08:30:00',
    'q.quick': '快捷时间',
    'q.today': '今天',
    'q.yesterday': '昨天',
    'q.week': '近 7 天',
    'q.reset': '重置',
    'q.submit': '查询',
    'q.csv': '导出 CSV',
    'q.csv_title': '下载当前查询的全部 {n} 条记录（CSV）',
    'q.auto': '每分钟自动刷新',
    'q.required': '请填写时间',
    'q.end_after_start': '结束时间必须晚于开始时间',
    'q.found': '共 {n} 条记录',
    'totals.audio_talk': '语音总时长',
    'totals.video_talk': '视频总时长',
    'totals.calls': '呼叫总数',
    'totals.connect_rate': '接通率',
    'chart.title': '通话时长分布',
    'chart.title_hour': '每小时通话时长',
    'chart.title_day': '每日通话时长',
    'chart.aria_hour': '柱状图：{n} 个小时的语音与视频通话时长',
    'chart.aria_day': '柱状图：{n} 天的语音与视频通话时长',
    'chart.talk': '通话时长',
    'chart.calls': '{n} 次呼叫',
    'chart.no_talk': '该时段没有接通的通话',
    'chart.table': '查看明细数据',
    'chart.zoom': '点击查看这一时段',
    'chart.hint': '点击柱子可查看该时段的明细',
    'chart.bucket_hour': '小时',
    'chart.bucket_day': '日期',
    'unit.s': '秒',
    'unit.min': '分钟',
    'unit.h': '小时',
    'stats.title': '查询统计',
    'stats.calls': '呼叫次数',
    'stats.connected': '接通次数',
    'stats.connect_rate': '接通率',
    'stats.talk_s': '总通话时长',
    'stats.avg_talk_s': '平均通话时长',
    'stats.all': '合计',
    'records.title': '通话记录',
    'records.empty': '没有符合条件的通话记录',
    'page.prev': '上一页',
    'page.next': '下一页',
    'page.range': '第 {from}–{to} 条，共 {total} 条',

    'log.title': '通话日志',
    'log.back': '← 返回',
    'log.ladder': '信令流程',
    'log.hint': '点击任一消息查看全文',
    'log.terminal': '终端',
    'log.event': 'sipedge 事件',
    'log.gap': '{d} 无信令',
    'log.empty': '这通电话没有保存的日志（可能已超过日志保留期）',
    'log.no_cdr': '话单尚未生成（通话可能仍在进行中）',
    'log.in_progress': '通话进行中，日志每 3 秒自动刷新',
    'log.received': '收到',
    'log.sent': '发出',
    'log.bytes': '{n} 字节',
    'log.not_utf8': '含非 UTF-8 字节，以替换字符显示',

    'monitor.title': '进程监控',
    'proc.title': '监控进程',
    'proc.absent': '本节点尚未提供进程监控数据（/api/processes 不可用）',
    'proc.none': '未配置需要监控的进程',
    'proc.name': '进程',
    'proc.state': '状态',
    'proc.pids': 'PID',
    'proc.cpu': 'CPU',
    'proc.memory': '内存',
    'proc.since': '状态变化时间',
    'proc.critical': '关键',
    'proc.state.running': '运行中',
    'proc.state.missing': '未运行',
    'proc.state.restarted': '已重启',
    'proc.state.over_limit': '超出限制',
    'proc.state.ok': '正常',
    'proc.state.unknown': '未知',
    'alarm.title': '告警',
    'alarm.active_only': '只看未清除的告警',
    'alarm.severity': '级别',
    'alarm.kind': '告警类型',
    'alarm.target': '对象',
    'alarm.message': '内容',
    'alarm.raised_at': '产生时间',
    'alarm.cleared_at': '清除时间',
    'alarm.active': '未清除',
    'alarm.active_count': '{n} 条未清除的告警',
    'alarm.empty': '没有告警',
    'alarm.none_active': '没有未清除的告警',
    'severity.critical': '紧急',
    'severity.major': '重要',
    'severity.minor': '次要',
    'severity.warning': '警告',
    'kind.process_missing': '进程缺失',
    'kind.process_restarted': '进程重启',
    'kind.process_cpu': 'CPU 过高',
    'kind.process_memory': '内存过高',
    'kind.upstream_down': 'Sipserver 无响应',
    'kind.disk_low': '磁盘空间不足',
    'kind.store_error': '存储错误',
    'kind.config_invalid': '配置文件无效',
    'kind.sink_lag': '数据库同步滞后',
  },
  en: {
    'nav.label': 'Pages',
    'nav.live': 'Live calls',
    'nav.query': 'Query',
    'nav.monitor': 'Monitoring',
    'lang.switch': 'Switch language',
    'health.ok': 'Node healthy',
    'health.down': 'Node down',
    'health.unknown': 'Node state unknown',
    'stream.open': 'Live',
    'stream.connecting': 'Connecting…',
    'stream.closed': 'Live updates lost; retrying',
    loading: 'Loading…',
    'action.view_log': 'View log',
    'action.close': 'Close',
    'action.copy': 'Copy',
    'action.dismiss': 'Dismiss',

    'error.network': 'cannot reach sipedge; check the network',
    'error.not_json': 'the server answered something unexpected',
    'error.unauthorized': 'sign-in needed: reload the page and enter your user name and password',
    'error.health': 'Reading the node state failed',
    'error.live': 'Reading live calls failed',
    'error.query': 'The query failed',
    'error.log': 'Reading the call log failed',
    'error.alarms': 'Reading alarms failed',
    'error.processes': 'Reading processes failed',

    'live.title': 'Live calls',
    'live.hint': 'Every call in progress, updated as it happens.',
    'live.empty': 'No calls in progress',
    'live.filter': 'Filter by caller or called number',
    'live.no_match': 'No call matches the filter',
    'live.total': 'In progress',
    'live.ringing': 'Setting up / ringing',
    'live.connected': 'Talking',
    'live.video': 'Video calls',

    'col.start_time': 'Start time',
    'col.end_time': 'End time',
    'col.ring_time': 'Ringing at',
    'col.answer_time': 'Answered at',
    'col.caller': 'Caller',
    'col.called': 'Called',
    'col.call_type': 'Call type',
    'col.state': 'State',
    'col.status': 'Status',
    'col.disposition': 'Outcome',
    'col.elapsed': 'Duration',
    'col.duration': 'Total duration',
    'col.talk': 'Talk time',
    'col.terminal': 'Terminal',
    'col.transport': 'Transport',
    'col.ended_by': 'Ended by',
    'col.call_id': 'Call-ID',
    'col.actions': 'Actions',

    'type.audio': 'Voice',
    'type.video': 'Video',
    'state.trying': 'Calling',
    'state.ringing': 'Ringing',
    'state.connected': 'Talking',
    'state.ended': 'Ended',
    'status.connected': 'Connected',
    'status.not_connected': 'Not connected',
    'disposition.answered': 'Answered',
    'disposition.busy': 'Busy',
    'disposition.declined': 'Declined',
    'disposition.no_answer': 'No answer',
    'disposition.cancelled': 'Cancelled',
    'disposition.failed': 'Failed',
    'disposition.timeout': 'Timed out',
    'ended_by.caller': 'Caller',
    'ended_by.callee': 'Callee',
    'ended_by.sipedge': 'sipedge (timeout)',

    'query.title': 'Query',
    'q.start': 'Start time',
    'q.end': 'End time',
    'q.type': 'Call type',
    'q.caller': 'Caller number',
    'q.called': 'Called number',
    'q.status': 'Connection status',
    'q.any': 'Any',
    'q.number_hint': 'End a number with * to match a prefix, e.g. 1380*',
    'q.time_hint': "Times as year-month-day hour:minute:second in the node's time zone, e.g. 2026-11-28 08:30:00",
    'q.bad_time': 'Write it as year-month-day hour:minute:second, e.g. 2026-11-28 08:30:00',
    'q.quick': 'Quick ranges',
    'q.today': 'Today',
    'q.yesterday': 'Yesterday',
    'q.week': 'Last 7 days',
    'q.reset': 'Reset',
    'q.submit': 'Search',
    'q.csv': 'Download CSV',
    'q.csv_title': 'Download all {n} records of this query (CSV)',
    'q.auto': 'Refresh every minute',
    'q.required': 'Enter a time',
    'q.end_after_start': 'The end must be after the start',
    'q.found': '{n} records',
    'totals.audio_talk': 'Voice talk time',
    'totals.video_talk': 'Video talk time',
    'totals.calls': 'Calls',
    'totals.connect_rate': 'Connect rate',
    'chart.title': 'Talk time',
    'chart.title_hour': 'Talk time per hour',
    'chart.title_day': 'Talk time per day',
    'chart.aria_hour': 'Bar chart: voice and video talk time over {n} hours',
    'chart.aria_day': 'Bar chart: voice and video talk time over {n} days',
    'chart.talk': 'Talk time',
    'chart.calls': '{n} calls',
    'chart.no_talk': 'No connected calls in this interval',
    'chart.table': 'Show the numbers',
    'chart.zoom': 'Select to query this interval',
    'chart.hint': 'Select a bar to query its interval',
    'chart.bucket_hour': 'Hour',
    'chart.bucket_day': 'Day',
    'unit.s': 's',
    'unit.min': 'min',
    'unit.h': 'h',
    'stats.title': 'Statistics',
    'stats.calls': 'Calls',
    'stats.connected': 'Connected',
    'stats.connect_rate': 'Connect rate',
    'stats.talk_s': 'Total talk time',
    'stats.avg_talk_s': 'Average talk time',
    'stats.all': 'All',
    'records.title': 'Call records',
    'records.empty': 'No call records match',
    'page.prev': 'Previous',
    'page.next': 'Next',
    'page.range': '{from}–{to} of {total}',

    'log.title': 'Call log',
    'log.back': '← Back',
    'log.ladder': 'SIP ladder',
    'log.hint': 'Select any message to read it in full',
    'log.terminal': 'Terminal',
    'log.event': 'sipedge event',
    'log.gap': '{d} without signalling',
    'log.empty': 'No log is kept for this call (it may be past the log retention)',
    'log.no_cdr': 'No record yet (the call may still be in progress)',
    'log.in_progress': 'In progress; the log refreshes every 3 seconds',
    'log.received': 'received',
    'log.sent': 'sent',
    'log.bytes': '{n} bytes',
    'log.not_utf8': 'holds bytes that are not UTF-8, shown as replacement characters',

    'monitor.title': 'Monitoring',
    'proc.title': 'Monitored processes',
    'proc.absent': 'This node does not report processes yet (/api/processes is not available)',
    'proc.none': 'No processes are configured for monitoring',
    'proc.name': 'Process',
    'proc.state': 'State',
    'proc.pids': 'PID',
    'proc.cpu': 'CPU',
    'proc.memory': 'Memory',
    'proc.since': 'State since',
    'proc.critical': 'critical',
    'proc.state.running': 'Running',
    'proc.state.missing': 'Missing',
    'proc.state.restarted': 'Restarted',
    'proc.state.over_limit': 'Over limit',
    'proc.state.ok': 'OK',
    'proc.state.unknown': 'Unknown',
    'alarm.title': 'Alarms',
    'alarm.active_only': 'Active alarms only',
    'alarm.severity': 'Severity',
    'alarm.kind': 'Kind',
    'alarm.target': 'Target',
    'alarm.message': 'Message',
    'alarm.raised_at': 'Raised',
    'alarm.cleared_at': 'Cleared',
    'alarm.active': 'Active',
    'alarm.active_count': '{n} active alarms',
    'alarm.empty': 'No alarms',
    'alarm.none_active': 'No active alarms',
    'severity.critical': 'Critical',
    'severity.major': 'Major',
    'severity.minor': 'Minor',
    'severity.warning': 'Warning',
    'kind.process_missing': 'Process missing',
    'kind.process_restarted': 'Process restarted',
    'kind.process_cpu': 'CPU over limit',
    'kind.process_memory': 'Memory over limit',
    'kind.upstream_down': 'Sipserver not answering',
    'kind.disk_low': 'Disk space low',
    'kind.store_error': 'Store error',
    'kind.config_invalid': 'Configuration file invalid',
    'kind.sink_lag': 'Database sink lagging',
  },
};

export const LANGS = Object.keys(TABLE);
/** For tests: the whole table. */
export const table = TABLE;

let current = 'zh';
const listeners = new Set();

function normalize(value) {
  const v = String(value || '').toLowerCase();
  if (v.startsWith('zh')) return 'zh';
  if (v.startsWith('en')) return 'en';
  return null;
}

/** Reads `?lang=` (and remembers it), else the remembered choice, else Chinese. */
export function initLang() {
  const fromUrl = normalize(new URLSearchParams(location.search).get('lang'));
  let stored = null;
  try {
    stored = normalize(localStorage.getItem(STORAGE_KEY));
    if (fromUrl) localStorage.setItem(STORAGE_KEY, fromUrl);
  } catch {
    // Storage can be disabled; the choice then lasts for this page only.
  }
  current = fromUrl || stored || 'zh';
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
}

export function lang() {
  return current;
}

/** Switches the language, remembers it, and tells every view to redraw its labels. */
export function setLang(next) {
  const chosen = normalize(next) || 'zh';
  current = chosen;
  try {
    localStorage.setItem(STORAGE_KEY, chosen);
  } catch {
    // As in initLang.
  }
  const url = new URL(location.href);
  if (url.searchParams.has('lang')) {
    url.searchParams.set('lang', chosen);
    history.replaceState(history.state, '', url);
  }
  document.documentElement.lang = chosen === 'zh' ? 'zh-CN' : 'en';
  for (const fn of listeners) fn(chosen);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

/** The text of `key` with `{name}` replaced from `vars`; `vars.fallback` (or the key) when
 * the table has no such key, so that a new API value still shows as itself. */
export function t(key, vars = {}) {
  let text = TABLE[current][key] ?? TABLE.zh[key];
  if (text === undefined) return vars.fallback ?? key;
  for (const [name, value] of Object.entries(vars)) text = text.replaceAll(`{${name}}`, String(value));
  return text;
}

/** Fills every `data-i18n` / `data-i18n-aria` element under `root`. */
export function applyStatic(root) {
  for (const node of root.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll('[data-i18n-aria]')) node.setAttribute('aria-label', t(node.dataset.i18nAria));
  for (const node of root.querySelectorAll('[data-i18n-placeholder]')) node.setAttribute('placeholder', t(node.dataset.i18nPlaceholder));
}
