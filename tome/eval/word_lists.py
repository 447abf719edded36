"""Everyday nouns: keys of the needles and the words of the common-word task. English words
are single lowercase words; Chinese words are two characters each, all distinct."""


def _words(block: str) -> tuple[str, ...]:
    # A block of text rather than a list literal: two hundred words stay readable.
    return tuple(block.split())


ENGLISH_WORDS = _words(
    """
    apple anchor badge bakery balcony banana basket beacon bicycle blanket bottle bread brick
    bridge broom bucket butter button cabbage cabin camera candle canoe canvas carpet carrot
    castle ceiling chair cherry chimney circus cliff clock cloud coffee compass copper cottage
    cotton crayon cricket crown curtain cushion daisy desert diamond dolphin donkey drawer drum
    eagle engine envelope falcon feather fence ferry fiddle finger flute forest fountain fox
    garden garlic ginger glacier glove goat granite grape guitar hammer harbor harvest helmet
    honey horizon island jacket jasmine kettle kitten ladder lantern lemon library lighthouse
    lily lizard lobster locket magnet mango maple marble meadow melon mirror mitten monkey
    mountain mushroom napkin needle nest notebook oak ocean olive onion orchard otter oven owl
    paddle palace panda paper parrot peach peanut pebble pencil pepper piano pillow pine planet
    plum pocket pond potato puzzle quilt rabbit radio raft raisin ribbon river robin rocket
    saddle sailor salmon sandal saucer scarf seagull shovel silver sketch sled snail spider
    sponge spoon squirrel stable statue stove sugar sunflower swan sweater table teapot tiger
    tomato towel tractor trumpet tulip tunnel turtle umbrella valley velvet violin wagon walnut
    wallet whistle willow window wizard wolf yacht zebra
    """
)

CHINESE_WORDS = _words(
    """
    苹果 香蕉 葡萄 西瓜 橘子 草莓 樱桃 柠檬 芒果 菠萝 桃子 梨子 核桃 花生 土豆 番茄 黄瓜 茄子
    白菜 萝卜 洋葱 大蒜 生姜 辣椒 蘑菇 豆腐 米饭 面条 饺子 包子 馒头 月饼 蛋糕 饼干 牛奶 咖啡
    茶叶 蜂蜜 果酱 奶酪 桌子 椅子 沙发 窗户 窗帘 地毯 枕头 被子 镜子 柜子 抽屉 台灯 蜡烛 花瓶
    茶壶 杯子 盘子 筷子 勺子 锅铲 水壶 剪刀 锤子 钉子 梯子 扫帚 水桶 雨伞 手套 围巾 帽子 外套
    毛衣 裙子 靴子 凉鞋 背包 钱包 钥匙 手表 眼镜 戒指 项链 纽扣 铅笔 钢笔 橡皮 尺子 书包 课本
    字典 信封 邮票 报纸 杂志 地图 相机 书架 钢琴 吉他 画笔 喇叭 鼓手 风筝 气球 积木 拼图 秋千
    滑梯 老虎 狮子 熊猫 猴子 兔子 松鼠 狐狸 野狼 斑马 骆驼 大象 鹦鹉 海豚 鲸鱼 乌龟 青蛙 蜗牛
    蜜蜂 蝴蝶 蜻蜓 蚂蚁 燕子 麻雀 喜鹊 鸽子 老鹰 天鹅 鸭子 公鸡 山羊 绵羊 小马 骏马 黄牛 水牛
    河流 湖泊 海洋 山峰 峡谷 瀑布 沙漠 森林 草原 田野 果园 花园 池塘 小溪 岛屿 海滩 悬崖 冰川
    火山 云朵 彩虹 星星 月亮 太阳 雪花 雨滴 露珠 闪电 灯塔 城堡 宫殿 寺庙 桥梁 隧道 码头 车站
    机场 学校 医院 银行 邮局 书店 商店 剧院 公园 广场 街道 农场 工厂 仓库 帐篷 木屋 阁楼 庭院
    轮船 帆船 火车 汽车 卡车 单车 飞机 火箭 马车 雪橇 孔雀 渡船 松树 柳树 枫树 竹子 荷花 菊花
    玫瑰 兰花 牡丹 梅花 桂花 茉莉 稻草 麦穗 棉花 丝绸 玉石 珍珠 钻石 黄金 白银 铜板 石头 砖块
    """
)
